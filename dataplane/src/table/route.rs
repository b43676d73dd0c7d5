//! The route table: longest-prefix match from a destination IPv4 to one packed
//! [`NextHop`], decided when the route is installed.
//!
//! The next-hop kind lives in each route, not in a global mode, so a node can
//! encapsulate to some peers and route natively to others (Calico's CrossSubnet)
//! with table changes alone.

use std::net::Ipv4Addr;

use super::lpm::{Lpm, LpmBuilder, Prefix};
use super::tunnel::TunnelId;

/// Where a routed packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// This node's pod range: deliver to the endpoint that holds the address.
    Local,
    /// A remote node reached through VXLAN; index into the tunnel table.
    Vxlan(TunnelId),
    /// A remote node reached through IPIP; index into the tunnel table.
    Ipip(TunnelId),
    /// Out of the uplink without encapsulation, to the underlay next hop held in
    /// the tunnel table entry (its Ethernet rewrite).
    Native(TunnelId),
    /// Hand to the node's kernel through the host port (outside the cluster CIDR).
    Host,
    /// Blackhole.
    Drop,
}

const KIND_SHIFT: u32 = 27;
const INDEX_MASK: u32 = (1 << KIND_SHIFT) - 1;

impl NextHop {
    /// Packs into the 31-bit LPM value: kind in bits 27..30, index below. Never 0.
    #[inline]
    pub const fn pack(self) -> u32 {
        let (k, i) = match self {
            NextHop::Local => (1, 0),
            NextHop::Vxlan(t) => (2, t.0),
            NextHop::Ipip(t) => (3, t.0),
            NextHop::Native(t) => (4, t.0),
            NextHop::Host => (5, 0),
            NextHop::Drop => (6, 0),
        };
        debug_assert!(i <= INDEX_MASK);
        (k << KIND_SHIFT) | (i & INDEX_MASK)
    }

    /// The next hop packed in an LPM value; `None` for 0 (no route).
    #[inline]
    pub fn unpack(v: u32) -> Option<NextHop> {
        let i = TunnelId(v & INDEX_MASK);
        Some(match v >> KIND_SHIFT {
            1 => NextHop::Local,
            2 => NextHop::Vxlan(i),
            3 => NextHop::Ipip(i),
            4 => NextHop::Native(i),
            5 => NextHop::Host,
            6 => NextHop::Drop,
            _ => return None,
        })
    }

    /// The tunnel table entry this next hop uses, if any.
    pub fn tunnel(self) -> Option<TunnelId> {
        match self {
            NextHop::Vxlan(t) | NextHop::Ipip(t) | NextHop::Native(t) => Some(t),
            _ => None,
        }
    }
}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextHop::Local => f.write_str("local"),
            NextHop::Vxlan(t) => write!(f, "vxlan tunnel {}", t.0),
            NextHop::Ipip(t) => write!(f, "ipip tunnel {}", t.0),
            NextHop::Native(t) => write!(f, "native via adjacency {}", t.0),
            NextHop::Host => f.write_str("host"),
            NextHop::Drop => f.write_str("drop"),
        }
    }
}

/// An immutable route table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    lpm: Lpm,
    routes: Vec<(Prefix, NextHop)>,
}

impl RouteTable {
    /// Builds a table; a later duplicate prefix replaces an earlier one.
    pub fn new(routes: impl IntoIterator<Item = (Prefix, NextHop)>) -> RouteTable {
        let mut b = LpmBuilder::new();
        for (p, nh) in routes {
            b.insert(p, nh.pack());
        }
        let lpm = b.build();
        let routes = b
            .iter()
            .filter_map(|(p, v)| NextHop::unpack(*v).map(|nh| (*p, nh)))
            .collect();
        RouteTable { lpm, routes }
    }

    /// The next hop for a destination (host-order address).
    #[inline(always)]
    pub fn lookup(&self, dst: u32) -> Option<NextHop> {
        NextHop::unpack(self.lpm.lookup(dst))
    }

    /// The next hop for a destination still packed (see [`NextHop::pack`]; 0:
    /// no route): equal values are equal next hops, so a caller can reuse
    /// what it derived from the last one.
    #[inline(always)]
    pub fn lookup_packed(&self, dst: u32) -> u32 {
        self.lpm.lookup(dst)
    }

    pub fn lookup_addr(&self, dst: Ipv4Addr) -> Option<NextHop> {
        self.lookup(u32::from(dst))
    }

    /// Every route, ordered by prefix.
    pub fn routes(&self) -> &[(Prefix, NextHop)] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn memory(&self) -> usize {
        self.lpm.memory() + self.routes.len() * std::mem::size_of::<(Prefix, NextHop)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        for nh in [
            NextHop::Local,
            NextHop::Vxlan(TunnelId(0)),
            NextHop::Ipip(TunnelId(77)),
            NextHop::Native(TunnelId(INDEX_MASK)),
            NextHop::Host,
            NextHop::Drop,
        ] {
            let v = nh.pack();
            assert!(v != 0 && v >> 31 == 0);
            assert_eq!(NextHop::unpack(v), Some(nh));
        }
        assert_eq!(NextHop::unpack(0), None);
    }

    #[test]
    fn lookup() {
        let t = RouteTable::new([
            ("0.0.0.0/0".parse().unwrap(), NextHop::Host),
            ("198.19.1.0/24".parse().unwrap(), NextHop::Local),
            (
                "198.19.2.0/24".parse().unwrap(),
                NextHop::Vxlan(TunnelId(3)),
            ),
        ]);
        assert_eq!(
            t.lookup_addr(Ipv4Addr::new(198, 19, 2, 9)),
            Some(NextHop::Vxlan(TunnelId(3)))
        );
        assert_eq!(
            t.lookup_addr(Ipv4Addr::new(198, 19, 1, 9)),
            Some(NextHop::Local)
        );
        assert_eq!(
            t.lookup_addr(Ipv4Addr::new(1, 1, 1, 1)),
            Some(NextHop::Host)
        );
        assert_eq!(t.len(), 3);
        assert_eq!(RouteTable::default().lookup(0), None);
    }
}
