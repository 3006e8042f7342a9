# AckboxPlugins.cmake - a plugin is one folder that declares itself.
#
# The top-level build adds every brokers/<name>/ and store/<name>/ that has a
# CMakeLists.txt (ackbox_add_plugin_folders). That file finds its libraries
# and calls ackbox_plugin() once; from that call come the ACKBOX_WITH_<NAME>
# option, the table of built-in plugins, the "scheme not built" messages
# (which name the option and the Debian package), the configure summary, the
# folder's tests (tests/CMakeLists.txt adds <folder>/tests for every built
# plugin) and the manifest scripts read. scripts/install-deps.sh reads the
# folder's packages.debian. See docs/plugins.md.
include_guard(GLOBAL)

# ackbox_plugin(<name>
#   TRANSPORT <ops symbol> | STORE <ops symbol>
#   SCHEMES <scheme>...        every scheme the table serves (a store: its
#                              scheme, then its aliases)
#   FOUND <variable> | ALWAYS  ACKBOX_WITH_<NAME> defaults to the variable's
#                              truth ("its libraries were found"); ALWAYS: no
#                              option, always built
#   [OPTION <name>]            the option's name instead of ACKBOX_WITH_<NAME>
#                              (several plugins may share one)
#   [TEST_ONLY]                a plugin for ackbox's own tests (loopback): the
#                              configure summary says so, docs/configuration.md
#                              leaves its keys out, and an install of a build
#                              that has it is refused (top-level CMakeLists.txt)
#   [DOC "<one line>"]         the option's help text
#   [SOURCES <file>...]        relative to the folder
#   [LIBS <target>...]         linked into libackbox (privately)
#   [INCLUDE_DIRS <dir>...]
#   [PUBLIC_HEADERS <file>...] installed with ackbox's headers
#   [BENCH_SOURCES <file>...]  ackbox-bench's part for this transport (a raw
#                              publisher, examples/bench/bench.h), compiled
#                              into ackbox-bench and linked with LIBS)
#
# Sets ACKBOX_BUILT_<NAME> to ON or OFF for the whole build. packages.debian
# in the folder ("build: <package>..." and "test: <package>..." lines) names
# what Debian must have to build it and to run its tests.
function(ackbox_plugin name)
  cmake_parse_arguments(P "ALWAYS;TEST_ONLY" "TRANSPORT;STORE;FOUND;DOC;OPTION"
    "SCHEMES;SOURCES;LIBS;INCLUDE_DIRS;PUBLIC_HEADERS;BENCH_SOURCES" ${ARGN})
  string(TOUPPER "${name}" NAME)
  string(MAKE_C_IDENTIFIER "${NAME}" NAME)
  set(where "${CMAKE_CURRENT_SOURCE_DIR}/CMakeLists.txt")
  if(P_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "${where}: ackbox_plugin(${name}): unexpected ${P_UNPARSED_ARGUMENTS}")
  endif()
  if(P_TRANSPORT AND NOT P_STORE)
    set(kind transport)
    set(symbol ${P_TRANSPORT})
  elseif(P_STORE AND NOT P_TRANSPORT)
    set(kind store)
    set(symbol ${P_STORE})
  else()
    message(FATAL_ERROR "${where}: ackbox_plugin(${name}) needs TRANSPORT <symbol> or STORE <symbol>")
  endif()
  if(NOT P_SCHEMES)
    message(FATAL_ERROR "${where}: ackbox_plugin(${name}) needs SCHEMES")
  endif()
  if(NOT P_ALWAYS AND NOT P_FOUND)
    message(FATAL_ERROR "${where}: ackbox_plugin(${name}) needs FOUND <variable> or ALWAYS")
  endif()
  get_property(known GLOBAL PROPERTY ACKBOX_PLUGINS)
  if(name IN_LIST known)
    message(FATAL_ERROR "${where}: a plugin named '${name}' is already declared")
  endif()

  # Debian packages, from the folder's packages.debian
  set(build_pkgs "")
  set(test_pkgs "")
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/packages.debian)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
      ${CMAKE_CURRENT_SOURCE_DIR}/packages.debian)
    file(STRINGS ${CMAKE_CURRENT_SOURCE_DIR}/packages.debian lines)
    foreach(line ${lines})
      if(line MATCHES "^build:(.*)$")
        separate_arguments(pkgs UNIX_COMMAND "${CMAKE_MATCH_1}")
        list(APPEND build_pkgs ${pkgs})
      elseif(line MATCHES "^test:(.*)$")
        separate_arguments(pkgs UNIX_COMMAND "${CMAKE_MATCH_1}")
        list(APPEND test_pkgs ${pkgs})
      endif()
    endforeach()
  endif()

  list(JOIN P_SCHEMES "://, " schemes_text)
  set(found ON)
  if(P_ALWAYS)
    set(option "")
    set(built ON)
  else()
    set(option ACKBOX_WITH_${NAME})
    if(P_OPTION)
      set(option ${P_OPTION})
    endif()
    if(${P_FOUND})
      set(found ON)
    else()
      set(found OFF)
    endif()
    option(${option} "${P_DOC} (${schemes_text}://)" ${found})
    if(${option} AND NOT found)
      list(JOIN build_pkgs " " pkgs_text)
      message(FATAL_ERROR "${option}=ON, but the libraries of the ${name} ${kind} were not "
        "found (Debian: ${pkgs_text}). Install them or configure with -D${option}=OFF.")
    endif()
    set(built ${${option}})
  endif()
  if(built)
    set(built ON)
  else()
    set(built OFF)
  endif()

  set_property(GLOBAL APPEND PROPERTY ACKBOX_PLUGINS ${name})
  foreach(field kind symbol option built found build_pkgs test_pkgs)
    set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_${field} "${${field}}")
  endforeach()
  set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_schemes "${P_SCHEMES}")
  set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_dir "${CMAKE_CURRENT_SOURCE_DIR}")
  set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_doc "${P_DOC}")
  set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_test_only "${P_TEST_ONLY}")
  set(ACKBOX_BUILT_${NAME} ${built} CACHE INTERNAL "ackbox_plugin(${name}) is built")
  if(NOT built)
    return()
  endif()

  foreach(s ${P_SOURCES})
    target_sources(ackbox PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/${s})
  endforeach()
  if(P_LIBS)
    target_link_libraries(ackbox PRIVATE ${P_LIBS})
  endif()
  if(P_INCLUDE_DIRS)
    target_include_directories(ackbox PRIVATE ${P_INCLUDE_DIRS})
  endif()
  foreach(h ${P_PUBLIC_HEADERS})
    get_filename_component(h ${h} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    set_property(TARGET ackbox APPEND PROPERTY PUBLIC_HEADER ${h})
  endforeach()
  if(P_BENCH_SOURCES)
    list(TRANSFORM P_BENCH_SOURCES PREPEND ${CMAKE_CURRENT_SOURCE_DIR}/)
    set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_bench_sources "${P_BENCH_SOURCES}")
    set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_bench_libs "${P_LIBS}")
  endif()
endfunction()

# ackbox_add_plugin_folders(<parent>...): adds every <parent>/<name>/ that has
# a CMakeLists.txt, in name order, and checks that it declared a plugin.
function(ackbox_add_plugin_folders)
  foreach(parent ${ARGN})
    file(GLOB children LIST_DIRECTORIES true CONFIGURE_DEPENDS
      ${PROJECT_SOURCE_DIR}/${parent}/*/CMakeLists.txt)
    list(SORT children)
    foreach(f ${children})
      get_filename_component(dir ${f} DIRECTORY)
      get_property(before GLOBAL PROPERTY ACKBOX_PLUGINS)
      add_subdirectory(${dir})
      get_property(after GLOBAL PROPERTY ACKBOX_PLUGINS)
      if("${before}" STREQUAL "${after}")
        message(FATAL_ERROR "${f} does not declare a plugin: call ackbox_plugin() (docs/plugins.md)")
      endif()
    endforeach()
  endforeach()
endfunction()

# Escapes a string for a C string literal.
function(_ackbox_c_string out text)
  string(REPLACE "\\" "\\\\" text "${text}")
  string(REPLACE "\"" "\\\"" text "${text}")
  set(${out} "\"${text}\"" PARENT_SCOPE)
endfunction()

# ackbox_generate_plugin_tables(): after every folder is added, writes
#   generated/builtins.c       the built-in ops tables (compiled into libackbox)
#   generated/plugin_list.h    ACKBOX_PLUGIN_SCHEMES(X): every declared scheme,
#                              built or not, with its option and package (the
#                              "not built" messages; tests check each one)
#   ackbox-plugins.txt         one line per plugin for scripts:
#                              <name> <transport|store> <ON|OFF> <folder> <scheme>...
function(ackbox_generate_plugin_tables)
  get_property(plugins GLOBAL PROPERTY ACKBOX_PLUGINS)
  set(_decl "")
  set(_tx "")
  set(_st "")
  set(list_h "/* Generated by CMake (cmake/AckboxPlugins.cmake) from the plugin folders. */\n")
  string(APPEND list_h "/* X(scheme, plugin, is_store, built, option, package) */\n")
  string(APPEND list_h "#define ACKBOX_PLUGIN_SCHEMES(X) \\\n")
  set(manifest "")
  foreach(name ${plugins})
    foreach(field kind symbol option built build_pkgs schemes dir)
      get_property(${field} GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_${field})
    endforeach()
    if(built)
      string(APPEND _decl "extern const ackbox_${kind}_ops ${symbol};\n")
      if(kind STREQUAL "transport")
        string(APPEND _tx "\t&${symbol},\n")
      else()
        string(APPEND _st "\t&${symbol},\n")
      endif()
    endif()
    list(JOIN build_pkgs " " pkgs)
    if(kind STREQUAL "store")
      set(is_store 1)
    else()
      set(is_store 0)
    endif()
    if(built)
      set(b 1)
    else()
      set(b 0)
    endif()
    _ackbox_c_string(c_name "${name}")
    _ackbox_c_string(c_option "${option}")
    _ackbox_c_string(c_pkgs "${pkgs}")
    foreach(s ${schemes})
      _ackbox_c_string(c_scheme "${s}")
      string(APPEND list_h "\tX(${c_scheme}, ${c_name}, ${is_store}, ${b}, ${c_option}, ${c_pkgs}) \\\n")
    endforeach()
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${dir})
    list(JOIN schemes " " schemes_text)
    string(APPEND manifest "${name} ${kind} ${built} ${rel} ${schemes_text}\n")
  endforeach()
  string(APPEND list_h "\t/* end */\n")
  configure_file(${PROJECT_SOURCE_DIR}/cmake/builtins.c.in
    ${PROJECT_BINARY_DIR}/generated/builtins.c @ONLY)
  file(CONFIGURE OUTPUT ${PROJECT_BINARY_DIR}/generated/plugin_list.h CONTENT "${list_h}" @ONLY)
  file(CONFIGURE OUTPUT ${PROJECT_BINARY_DIR}/ackbox-plugins.txt CONTENT "${manifest}" @ONLY)
  # the schemes of TEST_ONLY plugins, one per line (scripts/gen-config-doc.sh
  # leaves their keys out of the user's documentation)
  set(test_only "")
  foreach(name ${plugins})
    get_property(t GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_test_only)
    get_property(sch GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_schemes)
    if(t)
      foreach(x ${sch})
        string(APPEND test_only "${x}\n")
      endforeach()
    endif()
  endforeach()
  file(CONFIGURE OUTPUT ${PROJECT_BINARY_DIR}/ackbox-test-only.txt CONTENT "${test_only}" @ONLY)
  target_sources(ackbox PRIVATE ${PROJECT_BINARY_DIR}/generated/builtins.c)
endfunction()

# ackbox_plugin_summary(): one line per plugin at configure time.
function(ackbox_plugin_summary)
  get_property(plugins GLOBAL PROPERTY ACKBOX_PLUGINS)
  foreach(name ${plugins})
    foreach(field kind option built found build_pkgs schemes test_only)
      get_property(${field} GLOBAL PROPERTY ACKBOX_PLUGIN_${name}_${field})
    endforeach()
    list(JOIN schemes ", " s)
    if(option)
      set(how "${option}=${${option}}")
    else()
      set(how "always")
    endif()
    if(built AND test_only)
      message(STATUS "  ${kind} ${name} (${s}): built [${how}] -- TEST ONLY: acks without sending; this build must not be installed")
    elseif(built)
      message(STATUS "  ${kind} ${name} (${s}): built [${how}]")
    elseif(found)
      message(STATUS "  ${kind} ${name} (${s}): NOT built [${how}]")
    else()
      list(JOIN build_pkgs " " pkgs)
      message(STATUS "  ${kind} ${name} (${s}): NOT built [${how}: library not found; Debian: ${pkgs}]")
    endif()
  endforeach()
endfunction()
