# tests/integration/test_security.sh: the adversarial suite (docs/security.md maps each claim
# to its case). One CTest entry per case, named sec_<case>. Included from tests/CMakeLists.txt
# after agent.cmake (it reuses BS_AGENT_TEST_ENV).

# case  timeout (s), one list per area (tests/integration/security/<area>.sh)
set(BS_SEC_CASES_FILL      # fill.sh: query-string poisoning, path escape, expiry
)

set(BS_SEC_CASES_STORE     # store.sh: permissions, tampering, planted links, tenant share
)

set(BS_SEC_CASES_CONN      # conn.sh: connection exhaustion, fair fills, drain
)

set(BS_SEC_CASES_SHIM      # shim.sh: fake agent, narrow delegation, deadlines
  shim_fake_agent 120
  shim_token_single_flight 120
  shim_narrow_delegation 180
  shim_http_meta 180
  shim_connstr_endpoint_only 60
  shim_error_cause_first 60
  shim_read_explains 90
  shim_agent_deadlines 120
  shim_parallel_misses 120
)

set(BS_SEC_CASES ${BS_SEC_CASES_FILL} ${BS_SEC_CASES_STORE} ${BS_SEC_CASES_CONN}
    ${BS_SEC_CASES_SHIM})
list(LENGTH BS_SEC_CASES n)
if(n GREATER 0)
  math(EXPR last "${n} - 1")
  foreach(i RANGE 0 ${last} 2)
    math(EXPR j "${i} + 1")
    list(GET BS_SEC_CASES ${i} case)
    list(GET BS_SEC_CASES ${j} timeout)
    bs_integration_test(sec_${case}
      TIMEOUT ${timeout}
      COMMAND ${BS_BASH} ${CMAKE_CURRENT_LIST_DIR}/test_security.sh ${case}
      ENVIRONMENT ${BS_AGENT_TEST_ENV})
  endforeach()
endif()
