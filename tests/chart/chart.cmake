# The Helm chart (helm/blobswarm), the plain manifests and Grafana dashboard (deploy/) and
# every shell script, checked offline: tests/tools/check-chart.sh CHECK, one CTest each,
# label `chart` (ctest -L chart). helm comes from node_modules/.bin (scripts/setup.sh); a
# missing tool skips (77) outside CI and fails under CI=true.
foreach(check IN ITEMS lint render refs validate yamllint settings manifests dashboard)
  add_test(NAME chart_${check}
           COMMAND ${BS_BASH} ${BS_TEST_TOOLS}/check-chart.sh ${check}
                   $<TARGET_FILE:blobswarm-agent>)
  set_tests_properties(chart_${check} PROPERTIES LABELS chart TIMEOUT 120 SKIP_RETURN_CODE 77)
endforeach()
add_test(NAME lint_shellcheck COMMAND ${BS_BASH} ${BS_TEST_TOOLS}/check-chart.sh shell)
set_tests_properties(lint_shellcheck PROPERTIES LABELS chart TIMEOUT 120 SKIP_RETURN_CODE 77)
