//! Helpers shared by the process-level tests; the tests themselves live in `tests/`.
