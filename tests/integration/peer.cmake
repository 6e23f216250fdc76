# tests/integration/test_peer.c: the peer data plane in one process (agent/peersrv and
# peer/peerclient over loopback, with a real store, misbehaving relays and fake peers) and
# its loopback throughput; fills come from an in-process slow origin (waits for a fill). Needs
# no integration environment (no Azurite, no Redis).
# Included from tests/CMakeLists.txt. Run by hand: build/tests/test_peer [--bench-only]
add_executable(test_peer ${CMAKE_CURRENT_LIST_DIR}/test_peer.c)
target_link_libraries(test_peer PRIVATE bs_agent PkgConfig::CMOCKA Threads::Threads)
add_test(NAME integration_peer COMMAND test_peer)
set_tests_properties(integration_peer PROPERTIES LABELS integration TIMEOUT 120 PROCESSORS 2)
