# ackbox_add_transport_conformance(NAME <plugin> SOURCES <adapter.c>...
#                                  [LIBS <lib>...] [INCLUDE_DIRS <dir>...]
#                                  [DEFINITIONS <NAME=value>...]
#                                  [FIXTURES <f>...] [TIMEOUT <s>])
#
# Adds the ctest test transport_conformance.<plugin>: the one transport
# conformance suite (libackbox-conformance, tests/transport_conformance/) run
# through the adapter in SOURCES (an ackbox_tc_adapter and a main, see
# <ackbox/conformance.h>), built into transport_conformance_<plugin> and
# linked with LIBS, compiled with INCLUDE_DIRS and DEFINITIONS (a fixture
# script's path, say). NAME is the name the folder gave ackbox_plugin().
#
# Every transport folder's tests/CMakeLists.txt calls it once (it is
# brokers/<name>/tests/conformance_adapter.c by convention): a built transport
# that does not is a configure error (tests/CMakeLists.txt checks, after the
# plugin folders' tests are added). tests/CMakeLists.txt includes this file
# before adding them. The suite keeps its messages in the SQLite store: without
# it the run is declared but not added. See docs/plugins.md.
include_guard(GLOBAL)

function(ackbox_add_transport_conformance)
  cmake_parse_arguments(TC "" "NAME;TIMEOUT" "SOURCES;LIBS;INCLUDE_DIRS;DEFINITIONS;FIXTURES"
    ${ARGN})
  if(NOT TC_NAME OR NOT TC_SOURCES)
    message(FATAL_ERROR "ackbox_add_transport_conformance: NAME and SOURCES are required")
  endif()
  if(TC_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ackbox_add_transport_conformance(${TC_NAME}): unexpected ${TC_UNPARSED_ARGUMENTS}")
  endif()
  get_property(kind GLOBAL PROPERTY ACKBOX_PLUGIN_${TC_NAME}_kind)
  if(NOT kind STREQUAL "transport")
    message(FATAL_ERROR "ackbox_add_transport_conformance(${TC_NAME}): no transport plugin "
      "is declared under that name (ackbox_plugin(${TC_NAME} TRANSPORT ...))")
  endif()
  set_property(GLOBAL PROPERTY ACKBOX_PLUGIN_${TC_NAME}_conformance ON)
  if(NOT ACKBOX_BUILT_SQLITE)
    return()
  endif()
  if(NOT TC_TIMEOUT)
    set(TC_TIMEOUT 900)
  endif()
  set(t transport_conformance_${TC_NAME})
  add_executable(${t} ${TC_SOURCES})
  target_link_libraries(${t} PRIVATE ackbox_conformance ${TC_LIBS})
  if(TC_INCLUDE_DIRS)
    target_include_directories(${t} PRIVATE ${TC_INCLUDE_DIRS})
  endif()
  if(TC_DEFINITIONS)
    target_compile_definitions(${t} PRIVATE ${TC_DEFINITIONS})
  endif()
  if(ACKBOX_TSAN)
    # C11 threads routed to pthreads, as in every test of the TSan pass
    target_sources(${t} PRIVATE ${PROJECT_SOURCE_DIR}/tests/common/tsan_c11threads.c)
    set_target_properties(${t} PROPERTIES ENABLE_EXPORTS ON)
  endif()
  # On a real broker the suite stops, kills and restarts it with timing of
  # its own; under the sanitizer passes (ASan and TSan at once on two cores)
  # that timing made it flaky (a RabbitMQ queue forgotten by a restart soon
  # after its declare, an MQTT window read while TSan slowed the relay), so
  # it runs in the first pass only; loopback's runs under every pass.
  set(_tc_labels "transport;conformance")
  if(NOT TC_NAME STREQUAL "loopback")
    list(APPEND _tc_labels first_pass_only)
  endif()
  add_test(NAME transport_conformance.${TC_NAME} COMMAND ${t})
  set_tests_properties(transport_conformance.${TC_NAME} PROPERTIES TIMEOUT ${TC_TIMEOUT}
    LABELS "${_tc_labels}"
    ENVIRONMENT "ACKBOX_FIXTURE_DIR=${ACKBOX_FIXTURE_DIR};ACKBOX_TEST_TMP=${CMAKE_BINARY_DIR}/testtmp")
  if(TC_FIXTURES)
    set_tests_properties(transport_conformance.${TC_NAME} PROPERTIES FIXTURES_REQUIRED "${TC_FIXTURES}"
      RESOURCE_LOCK "${TC_FIXTURES}")
  endif()
endfunction()

# ackbox_check_transport_conformance(): after every plugin folder's tests are
# added, fails the configure for a built transport that declared no run.
function(ackbox_check_transport_conformance)
  get_property(plugins GLOBAL PROPERTY ACKBOX_PLUGINS)
  foreach(p ${plugins})
    foreach(field kind built dir conformance)
      get_property(${field} GLOBAL PROPERTY ACKBOX_PLUGIN_${p}_${field})
    endforeach()
    if(kind STREQUAL "transport" AND built AND NOT conformance)
      file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${dir})
      message(FATAL_ERROR "${rel}: the ${p} transport runs no transport conformance suite: "
        "call ackbox_add_transport_conformance(NAME ${p} SOURCES conformance_adapter.c ...) "
        "in ${rel}/tests/CMakeLists.txt (docs/plugins.md, \"Verifying a transport\")")
    endif()
  endforeach()
endfunction()
