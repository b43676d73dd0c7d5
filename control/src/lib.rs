//! Sluice's node agent: configuration, IPAM and state, the API, the daemon.

pub mod api;
