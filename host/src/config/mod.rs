//! Settings: one listener's (the builder with its documented defaults), what a node is built
//! from, the config file, and the units a person writes in it.

pub(crate) mod file;
pub(crate) mod listener;
pub(crate) mod spec;
pub(crate) mod units;
