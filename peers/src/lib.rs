//! Peer benchmarks only: see `benches/peers.rs` and BENCHMARKS.md.
