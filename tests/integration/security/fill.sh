# Adversarial cases: fill (see tests/integration/test_security.sh).
