# tests/integration/test_direct.c: libblobswarm.so reading the integration environment
# directly through its ABI (every auth mode, Azure errors, 64 concurrent readers, shutdown,
# token caching, odd blob names, faults injected by tests/tools/faultproxy.mjs, an endpoint
# killed or frozen mid-read). Included from tests/CMakeLists.txt, after bs_integration_test()
# is defined; needs the target blobswarm. The program links only cmocka, libcurl (for the
# token server's and the proxy's control endpoints), libdl and pthreads: it sees nothing of
# the library but its exported symbols.
#
# One CTest entry per group of cases (`test_direct LIB GROUP...`), so that a failure names its
# area and the slow groups can hold the locks they need:
#   auth         every identity: byte-exact reads (token server: RESOURCE_LOCK tokenserver)
#   errors       messages of failed reads                          (tokenserver)
#   concurrency  64 threads x 50 reads of the 1 GiB blob           (azurite_big)
#   lifecycle    shutdown/reuse; names: blob names that need URL care
#   tokencache   /stats counts of the token server                 (tokenserver)
#   faults       fault proxy and a private Azurite (node on PATH)
# Run by hand: BS_IT_DIR=build/it build/tests/test_direct build/provider-shim/libblobswarm.so
#              [GROUP...]   (after tests/tools/itenv.sh start build/it)

if(NOT COMMAND bs_integration_test)
  message(FATAL_ERROR "include tests/integration/CMakeLists.fragment.cmake after bs_integration_test() is defined")
endif()
if(NOT TARGET PkgConfig::CMOCKA)
  pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)
endif()

add_executable(test_direct ${CMAKE_CURRENT_LIST_DIR}/test_direct.c)
target_include_directories(test_direct PRIVATE
  ${PROJECT_SOURCE_DIR}/provider-shim   # cache_abi.h: the ABI typedefs only
  ${PROJECT_SOURCE_DIR}/tests/tools)    # gendata.h: the test data generator
target_compile_definitions(test_direct PRIVATE BS_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_link_libraries(test_direct PRIVATE PkgConfig::CMOCKA PkgConfig::CURL ${CMAKE_DL_LIBS}
                      Threads::Threads)
add_dependencies(test_direct blobswarm) # the library it loads, built with it

set(BS_TEST_DIRECT $<TARGET_FILE:test_direct> $<TARGET_FILE:blobswarm>)
bs_integration_test(integration_direct_auth
  TIMEOUT 300
  COMMAND ${BS_TEST_DIRECT} auth
  RESOURCE_LOCK tokenserver)
bs_integration_test(integration_direct_errors
  TIMEOUT 120
  COMMAND ${BS_TEST_DIRECT} errors
  RESOURCE_LOCK tokenserver)
bs_integration_test(integration_direct_concurrency
  TIMEOUT 600
  COMMAND ${BS_TEST_DIRECT} concurrency
  RESOURCE_LOCK azurite_big)
bs_integration_test(integration_direct_lifecycle
  TIMEOUT 120
  COMMAND ${BS_TEST_DIRECT} lifecycle names)
bs_integration_test(integration_direct_tokencache
  TIMEOUT 120
  COMMAND ${BS_TEST_DIRECT} tokencache
  RESOURCE_LOCK tokenserver)
bs_integration_test(integration_direct_faults
  TIMEOUT 300
  COMMAND ${BS_TEST_DIRECT} faults)
set_tests_properties(integration_direct_concurrency PROPERTIES PROCESSORS 2)
