//! Sluice's node agent: configuration, IPAM and state, the API, the daemon.

pub mod api;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod datastore;
#[cfg(feature = "daemon")]
pub mod ipam;
#[cfg(feature = "daemon")]
pub mod k8s;
#[cfg(feature = "daemon")]
pub mod policy;
#[cfg(feature = "daemon")]
pub mod store;
