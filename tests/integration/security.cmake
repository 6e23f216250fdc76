# tests/integration/test_security.sh: the adversarial suite (docs/security.md maps each claim
# to its case). One CTest entry per case, named sec_<case>. Included from tests/CMakeLists.txt
# after agent.cmake (it uses bs_agent_suite).

# case  timeout (s), one list per area (tests/integration/security/<area>.sh)
set(BS_SEC_CASES_FILL      # fill.sh: query-string poisoning, path escape, expiry
  fill_sas_operation 120
  fill_bad_answer 180
  fill_path_escape 180
  fill_expired_encoded 120
  fill_bearer_exp 120
)

set(BS_SEC_CASES_STORE     # store.sh: permissions, tampering, planted links, tenant share
  store_modes 90
  store_tamper 90
  store_link_chunk 90
  store_link_fanout 90
  store_tenant_share 180
)

set(BS_SEC_CASES_CONN      # conn.sh: connection exhaustion, fair fills, drain
  conn_unix_hog 60
  conn_http_slowloris 60
  conn_emfile 90
  conn_fair_fills 90
  conn_answer_deadline 60
  conn_drain_body 90
  conn_socket_mode 60
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
  shim_http_busy 90
)

set(BS_SEC_CASES ${BS_SEC_CASES_FILL} ${BS_SEC_CASES_STORE} ${BS_SEC_CASES_CONN}
    ${BS_SEC_CASES_SHIM})
bs_agent_suite(${CMAKE_CURRENT_LIST_DIR}/test_security.sh sec ${BS_SEC_CASES})
