//! Messages between the connections of one listener: the API every backend speaks, and the
//! in-process backend. A backend that spans hosts sits beside `local`.

pub(crate) mod local;
pub(crate) mod types;
pub(crate) mod waits;
