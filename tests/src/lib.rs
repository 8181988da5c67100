//! Shared harness for mesbak's integration tests (work in progress).
