//! mesbak-agent: the root-owned backup daemon (work in progress).
fn main() {}
