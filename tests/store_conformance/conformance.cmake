# ackbox_add_store_conformance(NAME name URL template
#                              [FIXTURES f ...] [CONF key=value ...] [TIMEOUT s])
#
# Adds the ctest test store_conformance.<name>: the one store conformance
# suite (tests/store_conformance/store_conformance.c) run against the store
# that URL names. The template is expanded per test so that each test gets an
# empty store: {dir} (a fresh directory), {unique} (a token no other test
# uses), {fixture:NAME:KEY} (KEY from a fixture's env file), {env:NAME}.
# CONF keys (values without spaces) are set on every configuration the suite
# makes. FIXTURES are required fixtures (ackbox_add_broker_fixture).
#
# A store's own tests/CMakeLists.txt includes this file and calls the
# function; tests/store_conformance/CMakeLists.txt does the same for SQLite.
# See docs/stores/conformance.md.
include_guard(GLOBAL)

function(ackbox_add_store_conformance)
  cmake_parse_arguments(SC "" "NAME;URL;TIMEOUT" "FIXTURES;CONF" ${ARGN})
  if(NOT SC_NAME OR NOT SC_URL)
    message(FATAL_ERROR "ackbox_add_store_conformance: NAME and URL are required")
  endif()
  if(SC_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ackbox_add_store_conformance(${SC_NAME}): unexpected ${SC_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT SC_TIMEOUT)
    set(SC_TIMEOUT 600)
  endif()
  if(NOT ACKBOX_FIXTURE_DIR)
    set(ACKBOX_FIXTURE_DIR ${CMAKE_BINARY_DIR}/fixtures)
  endif()
  # One executable for every store, built by whichever directory asks first.
  if(NOT TARGET store_conformance)
    add_executable(store_conformance
      ${PROJECT_SOURCE_DIR}/tests/store_conformance/store_conformance.c)
    ackbox_link_criterion(store_conformance)
    target_link_libraries(store_conformance PRIVATE ackbox Threads::Threads)
    target_include_directories(store_conformance PRIVATE ${PROJECT_SOURCE_DIR}/tests/common
      ${PROJECT_SOURCE_DIR}/brokers/loopback)
  endif()
  string(JOIN " " conf ${SC_CONF})
  add_test(NAME store_conformance.${SC_NAME} COMMAND store_conformance --jobs=1)
  set_tests_properties(store_conformance.${SC_NAME} PROPERTIES TIMEOUT ${SC_TIMEOUT}
    LABELS "store;conformance"
    ENVIRONMENT "ACKBOX_CONFORMANCE_URL=${SC_URL};ACKBOX_CONFORMANCE_CONF=${conf};ACKBOX_FIXTURE_DIR=${ACKBOX_FIXTURE_DIR};ACKBOX_TEST_TMP=${CMAKE_BINARY_DIR}/testtmp")
  if(SC_FIXTURES)
    set_tests_properties(store_conformance.${SC_NAME} PROPERTIES FIXTURES_REQUIRED "${SC_FIXTURES}"
      RESOURCE_LOCK "${SC_FIXTURES}")
  endif()
endfunction()
