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
  set_tests_properties(${names} PROPERTIES FIXTURES_REQUIRED ${C_FIXTURE}
    RESOURCE_LOCK ${C_FIXTURE})
  foreach(t ${names} fixture.${C_FIXTURE}.start fixture.${C_FIXTURE}.stop)
    if(TEST ${t})
      set_property(TEST ${t} APPEND PROPERTY LABELS first_pass_only)
    endif()
  endforeach()
endfunction()

# ackbox_add_netfault_test(<transport> FIXTURE <fixture> [ENVIRONMENT KEY=VALUE...])
#
# crash_netfault_<transport>: tests/crash/netfault.sh runs the CLI through
# tests/tools/faultproxy.py against the broker FIXTURE started (reset,
# blackhole, 200 ms latency, trickle, unreachable for 60 s; NETFAULT_SCENARIOS
# picks some). The broker is not restarted, so a crash fixture serves; a Kafka
# cluster must run behind the proxy (kafka-mock.sh start-proxied). Label
# first_pass_only, as the crash tests. CI makes the broker unreachable for
# 20 s (NETFAULT_UNREACHABLE_S), not the 60 s of run-full.sh's series, so that
# the three brokers' scenarios take about a minute each.
function(ackbox_add_netfault_test broker)
  cmake_parse_arguments(N "" "FIXTURE" "ENVIRONMENT" ${ARGN})
  if(NOT N_FIXTURE)
    message(FATAL_ERROR "ackbox_add_netfault_test(${broker}): FIXTURE is required")
  endif()
  if(NOT TARGET ackbox-cli)
    return()
  endif()
  set(name crash_netfault_${broker})
  add_test(NAME ${name}
    COMMAND bash ${PROJECT_SOURCE_DIR}/tests/crash/netfault.sh ${broker} $<TARGET_FILE:ackbox-cli>
            ${ACKBOX_FIXTURE_DIR}/${N_FIXTURE}/env ${PROJECT_SOURCE_DIR}/tests/tools/faultproxy.py)
  set_tests_properties(${name} PROPERTIES FIXTURES_REQUIRED ${N_FIXTURE}
    RESOURCE_LOCK ${N_FIXTURE} TIMEOUT 600
    LABELS first_pass_only ENVIRONMENT
    "ACKBOX_TEST_TMP=${CMAKE_BINARY_DIR}/testtmp;NETFAULT_RESULTS=${CMAKE_BINARY_DIR}/netfault-results.txt;NETFAULT_UNREACHABLE_S=20;${N_ENVIRONMENT}")
endfunction()

# ackbox_add_crash_tool(<VAR> <target>): BUILD/crash-tools.env, which the
# scripts run by hand read (run-full.sh, soak.sh --tools), gets
# VAR=<the target's file>. A plugin's tests/CMakeLists.txt names its helpers
# (a consumer, a mock cluster); tests/crash/CMakeLists.txt writes the file
# once every folder has been read.
function(ackbox_add_crash_tool var target)
  set_property(GLOBAL APPEND PROPERTY ACKBOX_CRASH_TOOLS "${var}=$<TARGET_FILE:${target}>")
endfunction()
