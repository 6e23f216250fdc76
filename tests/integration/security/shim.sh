# Adversarial cases: shim (see tests/integration/test_security.sh).
