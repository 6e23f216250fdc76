# Adversarial cases: conn (see tests/integration/test_security.sh).
