//! Forwarding tables, read by workers without locks and replaced atomically by
//! the control plane.
//!
//! A [`Tables`] value is one coherent snapshot: node parameters, endpoints,
//! routes and tunnels. Each part sits behind its own `Arc`, so an update that
//! changes only the routes shares the other parts with the previous snapshot.
//! The control plane publishes a whole new snapshot through a [`TableHandle`];
//! a worker's [`TableReader`] checks for a new one once per batch (one atomic
//! load) and never sees half of an update.

pub mod endpoint;
pub mod lpm;
pub mod route;
pub mod tunnel;

use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

pub use endpoint::{Endpoint, EndpointIdx, EndpointTable, Owner};
pub use lpm::Prefix;
pub use route::{NextHop, RouteTable};
pub use tunnel::{Encap, Tunnel, TunnelId, TunnelTable};

use crate::wire::{ipip, vxlan, MacAddr};

/// How this node reaches pods on other nodes by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Vxlan,
    Ipip,
    Native,
}

impl Mode {
    /// Bytes the encapsulation costs a pod's MTU.
    pub fn overhead(self) -> u16 {
        match self {
            Mode::Vxlan => vxlan::OVERHEAD as u16,
            Mode::Ipip => ipip::OVERHEAD as u16,
            Mode::Native => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Vxlan => "vxlan",
            Mode::Ipip => "ipip",
            Mode::Native => "native",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "vxlan" => Ok(Mode::Vxlan),
            "ipip" => Ok(Mode::Ipip),
            "native" => Ok(Mode::Native),
            other => Err(format!(
                "unknown mode {other:?}: expected vxlan, ipip or native"
            )),
        }
    }
}

/// The pods' gateway address (Calico's convention): a link-local address every
/// pod routes through, answered by the forwarder's proxy ARP.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC the forwarder answers with on pod ports (Calico uses the same).
pub const GATEWAY_MAC: MacAddr = MacAddr([0xee; 6]);

/// The default VTEP MAC of a node: locally administered, derived from its
/// underlay address so every Sluice node can compute a peer's without asking.
pub fn default_vtep_mac(node_ip: Ipv4Addr) -> MacAddr {
    let o = node_ip.octets();
    MacAddr([0x02, 0x53, o[0], o[1], o[2], o[3]])
}

/// Per-node parameters the stages need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeParams {
    pub mode: Mode,
    /// The node's underlay address: outer source, and what tunnels arrive at.
    pub node_ip: Ipv4Addr,
    pub uplink_mac: MacAddr,
    pub uplink_mtu: u16,
    /// MTU given to pods (uplink minus the mode's overhead, unless configured).
    pub pod_mtu: u16,
    pub vtep_mac: MacAddr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Answered on pod ports for the gateway and any non-local address.
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: MacAddr,
    /// The node kernel's MAC on the host port, when one is attached.
    pub host_mac: Option<MacAddr>,
    /// Accept VXLAN / IPIP from the uplink (derived from the mode; both in a
    /// mixed deployment).
    pub accept_vxlan: bool,
    pub accept_ipip: bool,
}

impl NodeParams {
    /// Parameters with Sluice's defaults for everything not given.
    pub fn new(mode: Mode, node_ip: Ipv4Addr, uplink_mac: MacAddr, uplink_mtu: u16) -> NodeParams {
        NodeParams {
            mode,
            node_ip,
            uplink_mac,
            uplink_mtu,
            pod_mtu: uplink_mtu.saturating_sub(mode.overhead()),
            vtep_mac: default_vtep_mac(node_ip),
            vni: 4096,
            vxlan_port: vxlan::DEFAULT_PORT,
            gateway_ip: GATEWAY_IP,
            gateway_mac: GATEWAY_MAC,
            host_mac: None,
            accept_vxlan: mode == Mode::Vxlan,
            accept_ipip: mode == Mode::Ipip,
        }
    }
}

/// One coherent snapshot of everything the fast path reads.
#[derive(Debug, Clone)]
pub struct Tables {
    pub node: Arc<NodeParams>,
    pub endpoints: Arc<EndpointTable>,
    pub routes: Arc<RouteTable>,
    pub tunnels: Arc<TunnelTable>,
    /// NetworkPolicy of the local endpoints (default: none isolated).
    pub policy: Arc<crate::policy::PolicyTables>,
    /// Increases with every published snapshot.
    pub generation: u64,
}

impl Tables {
    /// Empty tables for a node.
    pub fn new(node: NodeParams) -> Tables {
        Tables {
            node: Arc::new(node),
            endpoints: Arc::default(),
            routes: Arc::default(),
            tunnels: Arc::default(),
            policy: Arc::default(),
            generation: 0,
        }
    }
}

/// The control plane's side: publishes snapshots.
#[derive(Debug, Clone)]
pub struct TableHandle {
    inner: Arc<ArcSwap<Tables>>,
}

impl TableHandle {
    pub fn new(t: Tables) -> TableHandle {
        TableHandle {
            inner: Arc::new(ArcSwap::from_pointee(t)),
        }
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Tables> {
        self.inner.load_full()
    }

    /// Publishes a new snapshot built from the current one. Updates are
    /// serialised by the caller (one control thread); readers are never blocked.
    pub fn update(&self, f: impl FnOnce(&Tables) -> Tables) -> Arc<Tables> {
        let cur = self.inner.load_full();
        let mut next = f(&cur);
        next.generation = cur.generation + 1;
        let next = Arc::new(next);
        self.inner.store(next.clone());
        next
    }

    /// A reader for one worker.
    pub fn reader(&self) -> TableReader {
        TableReader {
            cache: Cache::new(self.inner.clone()),
        }
    }
}

/// A worker's view: the latest snapshot, refreshed with one atomic load.
#[derive(Debug)]
pub struct TableReader {
    cache: Cache<Arc<ArcSwap<Tables>>, Arc<Tables>>,
}

impl TableReader {
    /// The current snapshot; call once per batch and use it for the whole batch.
    #[inline]
    pub fn current(&mut self) -> &Arc<Tables> {
        self.cache.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_whole_snapshots() {
        let node = NodeParams::new(
            Mode::Vxlan,
            Ipv4Addr::new(198, 18, 0, 1),
            MacAddr([2, 0, 0, 0, 0, 1]),
            1500,
        );
        assert_eq!(node.pod_mtu, 1450);
        assert_eq!(node.vtep_mac.to_string(), "02:53:c6:12:00:01");
        let h = TableHandle::new(Tables::new(node));
        let mut r = h.reader();
        assert_eq!(r.current().generation, 0);
        // A writer thread publishes snapshots whose route count equals the generation.
        let w = h.clone();
        let t = std::thread::spawn(move || {
            for i in 1..=200u32 {
                w.update(|t| {
                    let routes = (0..i).map(|j| {
                        (
                            Prefix::new(Ipv4Addr::from(0xc613_0000 + (j << 8)), 24).unwrap(),
                            NextHop::Local,
                        )
                    });
                    Tables {
                        routes: Arc::new(RouteTable::new(routes)),
                        ..t.clone()
                    }
                });
            }
        });
        let mut last = 0;
        while last < 200 {
            let s = r.current();
            assert_eq!(s.routes.len() as u64, s.generation, "torn snapshot");
            assert!(s.generation >= last);
            last = s.generation;
        }
        t.join().unwrap();
    }
}
