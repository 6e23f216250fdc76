# Unit tests: one cmocka executable per module of common/, plus the ABI checks of the
# provider library (exact export list, and a dlopen from a bare libc-only host).
# Included from tests/CMakeLists.txt; needs the targets bs_common and blobswarm.
# Run them alone with `ctest -L unit`.

if(NOT TARGET PkgConfig::CMOCKA)
  pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)
endif()

set(BS_UNIT_MODULES config connstr sharedkey token blobreader crc32c log names azcred fetch udkey)
foreach(module IN LISTS BS_UNIT_MODULES)
  add_executable(unit_${module} ${CMAKE_CURRENT_LIST_DIR}/test_${module}.c)
  target_link_libraries(unit_${module} PRIVATE bs_common PkgConfig::CMOCKA)
  add_test(NAME unit_${module} COMMAND unit_${module})
  set_tests_properties(unit_${module} PROPERTIES LABELS unit TIMEOUT 60)
endforeach()

# The host links nothing of ours: what the library needs it must bring itself.
add_executable(unit_dlopen_bare ${CMAKE_CURRENT_LIST_DIR}/dlopen_bare.c)
target_link_libraries(unit_dlopen_bare PRIVATE ${CMAKE_DL_LIBS})
add_test(NAME unit_dlopen_bare COMMAND unit_dlopen_bare $<TARGET_FILE:blobswarm>)

add_test(NAME unit_exports
         COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/check_exports.sh $<TARGET_FILE:blobswarm>)
set_tests_properties(unit_dlopen_bare unit_exports PROPERTIES LABELS unit TIMEOUT 60)
if(CMAKE_NM)
  set_tests_properties(unit_exports PROPERTIES ENVIRONMENT "NM=${CMAKE_NM}")
endif()

# agent/metrics: the registry's cmocka tests, then promtool on a sample exposition the same
# binary writes (unit_metrics --write-sample FILE). The promtool check is skipped (exit 77)
# where promtool is not installed (scripts/setup.sh installs Debian's prometheus package).
add_executable(unit_metrics ${CMAKE_CURRENT_LIST_DIR}/test_metrics.c)
target_link_libraries(unit_metrics PRIVATE bs_agent PkgConfig::CMOCKA Threads::Threads)
add_test(NAME unit_metrics COMMAND unit_metrics)
add_test(NAME unit_metrics_sample
         COMMAND unit_metrics --write-sample ${CMAKE_CURRENT_BINARY_DIR}/metrics-sample.prom)
add_test(NAME unit_metrics_promtool
         COMMAND ${BS_BASH} ${BS_TEST_TOOLS}/check-metrics.sh
                 ${CMAKE_CURRENT_BINARY_DIR}/metrics-sample.prom)
set_tests_properties(unit_metrics_sample PROPERTIES FIXTURES_SETUP metrics_sample)
set_tests_properties(unit_metrics_promtool PROPERTIES FIXTURES_REQUIRED metrics_sample
                     SKIP_RETURN_CODE 77)
set_tests_properties(unit_metrics unit_metrics_sample unit_metrics_promtool PROPERTIES
                     LABELS unit TIMEOUT 120)

# agent/store: real files in a temp dir; the disk-full case mounts a 1 MiB tmpfs when root.
add_executable(unit_store ${CMAKE_CURRENT_LIST_DIR}/test_store.c)
target_link_libraries(unit_store PRIVATE bs_agent PkgConfig::CMOCKA Threads::Threads)
add_test(NAME unit_store COMMAND unit_store)
set_tests_properties(unit_store PROPERTIES LABELS unit TIMEOUT 120)

# common/agentproto (codec, untrusted-input rejection) and the agent's endpoint allow-list.
add_executable(unit_agentproto ${CMAKE_CURRENT_LIST_DIR}/test_agentproto.c)
target_link_libraries(unit_agentproto PRIVATE bs_agent PkgConfig::CMOCKA)
add_test(NAME unit_agentproto COMMAND unit_agentproto)
set_tests_properties(unit_agentproto PROPERTIES LABELS unit TIMEOUT 60)

# common/sas (SAS fields, expiry) with the agent's credential expiry and grant cap.
add_executable(unit_sas ${CMAKE_CURRENT_LIST_DIR}/test_sas.c)
target_link_libraries(unit_sas PRIVATE bs_agent PkgConfig::CMOCKA Threads::Threads)
add_test(NAME unit_sas COMMAND unit_sas)
set_tests_properties(unit_sas PROPERTIES LABELS unit TIMEOUT 60)

# peer/redisidx without a server: URL parsing, the blob-version tag, option checks, answers
# when Redis is unreachable (tests/integration/redisidx.cmake runs it against redis-server).
add_executable(unit_redisidx ${CMAKE_CURRENT_LIST_DIR}/test_redisidx.c)
target_link_libraries(unit_redisidx PRIVATE bs_agent PkgConfig::CMOCKA Threads::Threads)
add_test(NAME unit_redisidx COMMAND unit_redisidx)
set_tests_properties(unit_redisidx PROPERTIES LABELS unit TIMEOUT 60)

# peer/peerauth: request signatures, chunk records, the cluster secret file's checks.
add_executable(unit_peerauth ${CMAKE_CURRENT_LIST_DIR}/test_peerauth.c)
target_link_libraries(unit_peerauth PRIVATE bs_agent PkgConfig::CMOCKA)
add_test(NAME unit_peerauth COMMAND unit_peerauth)
set_tests_properties(unit_peerauth PROPERTIES LABELS unit TIMEOUT 60)
