//! What a running node lets an operator see: counters per listener, and histograms of
//! durations.

pub(crate) mod histogram;
pub(crate) mod stats;
