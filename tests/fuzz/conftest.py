from tests.e2e.conftest import mesh  # noqa: F401  (the in-process mesh the fuzzer calls)
