//! The SPIFFE Workload API as a source, against the fake agent (feature `spiffe`).
#![cfg(feature = "spiffe")]
