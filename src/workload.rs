//! Synthetic change histories for the demo, tests and benchmarks, and an
//! in-order reference applier that gives the expected final state.
