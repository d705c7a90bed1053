//! The parts of `hull-jailer` a runtime needs without running it: the host
//! cgroup layout of a sandbox, to clean up after a jailer that was killed.
//! The jailer binary (`main.rs`) is the rest.

pub mod cgroup;
