# Adversarial cases: store (see tests/integration/test_security.sh).
