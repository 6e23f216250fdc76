# tests/integration/test_cluster.sh: peer sharing across agents in network namespaces
# (tests/tools/cluster.sh), against the integration environment (fixture `azurite`). One CTest
# entry per case, named cluster_<case>; each builds and tears down its own cluster. Needs root
# (namespaces, veth, tc): elsewhere a case exits 77 (skipped), under CI=true it fails.
# Included from tests/CMakeLists.txt after agent.cmake (it uses bs_agent_suite).
# Run one case by hand (as root, after tests/tools/itenv.sh start build/it):
#   BS_IT_DIR=build/it BS_GENDATA=build/tests/bs-gendata \
#   BS_AGENT_BIN=build/agent/blobswarm-agent BS_SHIM_LIB=build/provider-shim/libblobswarm.so \
#   BS_READ_CLI=build/tools/blobswarm-read bash tests/integration/test_cluster.sh cold4

# case  timeout (s): each takes 5-25 s on a 2-core machine; the timeouts leave room for a
# loaded CI runner, not for hangs (every wait inside is bounded).
set(BS_CLUSTER_CASES
  cold4 120
  cold4_streamer 150
  kill_holder 150
  redis_restart 150
  corrupt_peer 150
  no_secret 150
  lease_killed 120
  overwrite 150
  redis_down_start 120)
bs_agent_suite(${CMAKE_CURRENT_LIST_DIR}/test_cluster.sh cluster ${BS_CLUSTER_CASES})
# Four agents, their loads, the origin proxy and Azurite load both cores: one case at a time.
list(LENGTH BS_CLUSTER_CASES n)
math(EXPR last "${n} - 2")
foreach(i RANGE 0 ${last} 2)
  list(GET BS_CLUSTER_CASES ${i} case)
  set_tests_properties(cluster_${case} PROPERTIES PROCESSORS 2 RESOURCE_LOCK cluster_net)
endforeach()
