//! syncdata's test kit, for tests, the demo and the benchmarks only (never
//! shipped): a realistic change history generator and the in-order reference
//! applier every convergence check compares against ([`workload`]), and the
//! one harness that reaches or starts real servers and runs the binaries
//! ([`harness`]).

pub mod delay;
pub mod harness;
pub mod workload;
