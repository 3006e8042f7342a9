# ackbox_add_bench_smoke(<name> (FIXTURE <fixture> KEY <env key> | URL <url>)
#                        [ARGS <arg>...])
#
# Adds the ctest test bench.smoke.<name>: `ackbox-bench --smoke` against the
# broker a fixture started (its URL read from the fixture's env file, KEY) or
# against URL, with ARGS. It must finish with complete, sane figures in every
# mode it runs (rates > 0, every message acked, nothing failed; the
# hand-written mode's table empty afterwards) in well under 30 s. A transport's
# tests/CMakeLists.txt calls it; nothing happens without ackbox-bench
# (examples off). Label first_pass_only: not in scripts/test.sh's sanitizer
# pass.
include_guard(GLOBAL)

function(ackbox_add_bench_smoke name)
  cmake_parse_arguments(B "" "FIXTURE;KEY;URL" "ARGS" ${ARGN})
  if(NOT TARGET ackbox-bench)
    return()
  endif()
  set(test bench.smoke.${name})
  if(B_FIXTURE AND B_KEY)
    add_test(NAME ${test} COMMAND bash ${PROJECT_SOURCE_DIR}/examples/bench/smoke.sh
      $<TARGET_FILE:ackbox-bench> ${B_FIXTURE} ${B_KEY} ${B_ARGS})
    set_tests_properties(${test} PROPERTIES FIXTURES_REQUIRED ${B_FIXTURE}
      RESOURCE_LOCK ${B_FIXTURE})
  elseif(B_URL)
    add_test(NAME ${test} COMMAND ackbox-bench --smoke --transport ${B_URL} ${B_ARGS})
  else()
    message(FATAL_ERROR "ackbox_add_bench_smoke(${name}): FIXTURE and KEY, or URL")
  endif()
  set_tests_properties(${test} PROPERTIES TIMEOUT 30 LABELS first_pass_only
    ENVIRONMENT "ACKBOX_FIXTURE_DIR=${CMAKE_BINARY_DIR}/fixtures")
endfunction()
