//! What a running node lets an operator see: counters per listener.

pub(crate) mod stats;
