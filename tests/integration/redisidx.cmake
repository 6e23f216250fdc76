# tests/integration/test_redisidx.c: peer/redisidx against a private redis-server that
# tests/integration/redisidx.sh starts on a free 127.0.0.1 port (no Azurite fixture needed),
# and against a hostile fake server the program runs itself. Prints "measure:" lines (round
# trips of DECIDE and ANNOUNCE, redis-server CPU per script call). Skipped (77) without
# redis-server, except under CI=true.
# Run by hand: bash tests/integration/redisidx.sh build/tests/test_redisidx
if(NOT TARGET PkgConfig::CMOCKA)
  pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)
endif()

add_executable(test_redisidx ${CMAKE_CURRENT_LIST_DIR}/test_redisidx.c)
target_link_libraries(test_redisidx PRIVATE bs_agent PkgConfig::CMOCKA Threads::Threads)
add_test(NAME integration_redisidx
         COMMAND ${BS_BASH} ${CMAKE_CURRENT_LIST_DIR}/redisidx.sh $<TARGET_FILE:test_redisidx>)
set_tests_properties(integration_redisidx PROPERTIES
  LABELS integration
  TIMEOUT 120
  SKIP_RETURN_CODE 77)
