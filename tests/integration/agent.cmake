# tests/integration/test_agent.sh: the node agent (blobswarm-agent) with the shim, against the
# integration environment (fixture `azurite`). One CTest entry per case, named agent_<case>;
# each case starts its own agent(s), and a counting tests/tools/faultproxy.mjs where it
# counts origin requests, in a temporary directory, and stops them when it ends.
# Included from tests/CMakeLists.txt after bs_integration_test() is defined; needs the
# targets blobswarm, blobswarm-agent, blobswarm-read and bs-gendata.
# Run one case by hand (after tests/tools/itenv.sh start build/it):
#   BS_IT_DIR=build/it BS_GENDATA=build/tests/bs-gendata \
#   BS_AGENT_BIN=build/agent/blobswarm-agent BS_SHIM_LIB=build/provider-shim/libblobswarm.so \
#   BS_READ_CLI=build/tools/blobswarm-read BS_AGENT_HERD=build/tests/agent_herd \
#   bash tests/integration/test_agent.sh cold_warm

if(NOT COMMAND bs_integration_test)
  message(FATAL_ERROR "include tests/integration/agent.cmake after bs_integration_test() is defined")
endif()

# agent_herd: N threads call blob_read at once on one chunk (case single_flight). Like
# blobswarm-read it sees the library only through its exported ABI.
add_executable(agent_herd ${CMAKE_CURRENT_LIST_DIR}/agent_herd.c)
target_include_directories(agent_herd PRIVATE
  ${PROJECT_SOURCE_DIR}/provider-shim   # cache_abi.h: the ABI typedefs only
  ${PROJECT_SOURCE_DIR}/tests/tools)    # gendata.h: the test data generator
target_link_libraries(agent_herd PRIVATE ${CMAKE_DL_LIBS} Threads::Threads)
add_dependencies(agent_herd blobswarm blobswarm-agent blobswarm-read)

set(BS_AGENT_TEST_ENV
  BS_AGENT_BIN=$<TARGET_FILE:blobswarm-agent>
  BS_SHIM_LIB=$<TARGET_FILE:blobswarm>
  BS_READ_CLI=$<TARGET_FILE:blobswarm-read>
  BS_AGENT_HERD=$<TARGET_FILE:agent_herd>)

# case  timeout (s): every case takes 2-10 s on a 2-core machine; the timeouts leave room for
# a loaded CI runner, not for hangs (every wait inside is bounded).
set(BS_AGENT_CASES
  cold_warm 90
  restart 90
  overwrite 90
  sas_scope 60
  endpoint_refused 60
  kill_midload 120
  frozen 90
  http_route 90
  single_flight 120
  pending 120
  sigterm_drain 90
  sigterm_stuck 90
  sigterm_check 60
  grid_change 90
  http_grid 90
  eviction 120
  corrupt_chunk 90
  corrupt_http 90
  auth_modes 90
  metrics_lint 60)
# bs_agent_suite(SCRIPT PREFIX case timeout case timeout ...): one CTest entry PREFIX_case per
# case, running `SCRIPT case` with the agent binaries in its environment.
function(bs_agent_suite script prefix)
  set(cases ${ARGN})
  list(LENGTH cases n)
  if(n EQUAL 0)
    return()
  endif()
  math(EXPR last "${n} - 1")
  foreach(i RANGE 0 ${last} 2)
    math(EXPR j "${i} + 1")
    list(GET cases ${i} case)
    list(GET cases ${j} timeout)
    bs_integration_test(${prefix}_${case}
      TIMEOUT ${timeout}
      COMMAND ${BS_BASH} ${script} ${case}
      ENVIRONMENT ${BS_AGENT_TEST_ENV})
    # 77: a case that cannot run here (not root, outside CI) says so; under CI=true it fails.
    set_tests_properties(${prefix}_${case} PROPERTIES SKIP_RETURN_CODE 77)
  endforeach()
endfunction()
bs_agent_suite(${CMAKE_CURRENT_LIST_DIR}/test_agent.sh agent ${BS_AGENT_CASES})
# The herd and the kill/stall cases load the machine (200 threads, node proxy, Azurite).
set_tests_properties(agent_single_flight agent_kill_midload PROPERTIES PROCESSORS 2)
