//! Self-tests of the integration harness in tests/support against real tools.

mod support;

#[test]
fn compiles() {}
