# tests/integration/test_k8s_e2e.sh: the image built (deploy/build-image.sh, cached while its
# inputs do not change), the Helm chart rendered, its DaemonSet's pod played with podman next
# to a loopback Redis and Azurite, a workload pod loading a model through the shim via the
# hostPath socket, the agent's /metrics. Label `k8s` (ctest -L k8s). Needs root and podman
# (scripts/setup.sh); exit 77 (skipped) without them outside CI, a failure under CI=true.
# On 2 cores: about 20-30 s with the images cached (a source change adds ~30 s of compile);
# 4-4.5 min on a machine without them (base image from mmdebstrap, packages, compile).
add_test(NAME k8s_e2e COMMAND ${BS_BASH} ${CMAKE_CURRENT_LIST_DIR}/test_k8s_e2e.sh)
set_tests_properties(k8s_e2e PROPERTIES
  LABELS k8s
  TIMEOUT 900
  PROCESSORS 2
  SKIP_RETURN_CODE 77
  ENVIRONMENT "BS_GENDATA=$<TARGET_FILE:bs-gendata>")
