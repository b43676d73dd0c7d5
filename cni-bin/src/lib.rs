//! The Sluice CNI plugin: validates what the container runtime passes (environment and
//! network configuration), forwards the operation to sluiced over its Unix socket, and prints
//! the answer in the CNI version the runtime asked for.
//!
//! The plugin itself holds no state and touches no network namespace: sluiced creates pod
//! interfaces and allocates addresses. [`run`] is the whole invocation; the binary only wires
//! the process environment, stdin and the socket to it.

#![forbid(unsafe_code)]

pub mod config;
pub mod env;
pub mod error;
mod plugin;
pub mod result;
pub mod version;

pub use plugin::{run, Daemon, Outcome, SocketDaemon, MAX_STDIN};
