# ackbox_add_crash_tests(<transport> FIXTURE <fixture> ADAPTER <crash_adapter.sh>
#                        [MODES kill9 outage] [POINTS] [ENVIRONMENT <KEY=value>...])
#
# Adds the crash and outage suite (docs/reliability.md) for one transport:
# crash_kill9_<transport> (the CLI's publish killed with -9 at random moments,
# then a relay delivers the rest) and crash_outage_<transport> (the broker
# stopped mid-stream), or those MODES names, run by tests/crash/harness.sh
# against the broker that FIXTURE started. That fixture must be the transport's own (the tests kill
# and restart its broker). ADAPTER tells the harness how to reach, consume
# from, stop and start that broker (the interface is in harness.sh). With
# POINTS, also crash_point_<point>_<transport> for every crash point of the
# core (a CLI built with ACKBOX_CRASH_POINTS dies there). ENVIRONMENT is
# set for every one of these tests (the adapter reads it: the path of a
# consumer built in the folder, say; values may be generator expressions).
#
# A transport's tests/CMakeLists.txt calls it; tests/CMakeLists.txt includes
# this file before adding them. Every test and the fixture carry the label
# first_pass_only (scripts/test.sh leaves them out of the sanitizer pass).
include_guard(GLOBAL)

function(ackbox_add_crash_tests broker)
  cmake_parse_arguments(C "POINTS" "FIXTURE;ADAPTER" "MODES;ENVIRONMENT" ${ARGN})
  if(NOT C_FIXTURE OR NOT C_ADAPTER)
    message(FATAL_ERROR "ackbox_add_crash_tests(${broker}): FIXTURE and ADAPTER are required")
  endif()
  if(NOT TARGET ackbox-cli)
    return() # examples (the CLI) not built
  endif()
  get_filename_component(adapter ${C_ADAPTER} ABSOLUTE)
  set(harness ${PROJECT_SOURCE_DIR}/tests/crash/harness.sh)
  set(envfile ${ACKBOX_FIXTURE_DIR}/${C_FIXTURE}/env)
  set(env "ACKBOX_TEST_TMP=${CMAKE_BINARY_DIR}/testtmp;CRASH_RESULTS=${CMAKE_BINARY_DIR}/crash-results.txt")
  list(APPEND env ${C_ENVIRONMENT})
  set(names "")
  if(NOT C_MODES)
    set(C_MODES kill9 outage)
  endif()
  foreach(mode ${C_MODES})
    set(name crash_${mode}_${broker})
    add_test(NAME ${name}
      COMMAND bash ${harness} ${broker} ${mode} $<TARGET_FILE:ackbox-cli> ${envfile} ${adapter})
    set_tests_properties(${name} PROPERTIES TIMEOUT 600 ENVIRONMENT "${env}")
    list(APPEND names ${name})
  endforeach()
  if(C_POINTS AND TARGET ackbox-crashpoints)
    foreach(point after_persist after_send after_confirm) # ABX_CRASH_POINT in core/
      set(name crash_point_${point}_${broker})
      add_test(NAME ${name}
        COMMAND bash ${harness} ${broker} point $<TARGET_FILE:ackbox-cli> ${envfile} ${adapter})
      set_tests_properties(${name} PROPERTIES TIMEOUT 300 ENVIRONMENT
        "${env};CRASH_POINT=${point};CRASH_CLI=$<TARGET_FILE:ackbox-crashpoints>")
      list(APPEND names ${name})
    endforeach()
  endif()
  set_tests_properties(${names} PROPERTIES FIXTURES_REQUIRED ${C_FIXTURE})
  foreach(t ${names} fixture.${C_FIXTURE}.start fixture.${C_FIXTURE}.stop)
    if(TEST ${t})
      set_property(TEST ${t} APPEND PROPERTY LABELS first_pass_only)
    endif()
  endforeach()
endfunction()
