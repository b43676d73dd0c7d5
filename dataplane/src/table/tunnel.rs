//! Tunnels and adjacencies: for each remote node (or underlay next hop) a
//! prebuilt outer header, so that encapsulation is one copy plus patches of
//! lengths, IPv4 ID and checksum, and the entropy source port.

use std::net::Ipv4Addr;

use hashbrown::HashSet;

use super::NodeParams;
use crate::wire::{checksum, eth, ipip, ipv4, udp, vxlan, MacAddr};

/// Index of an entry in the [`TunnelTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub u32);

/// How a tunnel entry wraps a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encap {
    /// Outer Ethernet + IPv4 + UDP + VXLAN, inner Ethernet kept.
    Vxlan,
    /// Outer Ethernet + IPv4 (protocol 4), inner Ethernet removed.
    Ipip,
    /// Ethernet rewrite only (native routing through the underlay).
    Native,
}

/// Largest rewrite: the VXLAN outer headers.
pub const MAX_REWRITE: usize = vxlan::OVERHEAD;
const IP_AT: usize = eth::HEADER_LEN;
const UDP_AT: usize = IP_AT + ipv4::HEADER_LEN;

/// One tunnel or adjacency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub encap: Encap,
    /// The remote node's underlay address (native: the next hop's address).
    pub remote: Ipv4Addr,
    /// The underlay next hop's MAC; `None` until the neighbour is resolved, and
    /// the tunnel drops packets (`NeighbourUnresolved`) meanwhile.
    pub nh_mac: Option<MacAddr>,
    /// VXLAN only: the inner frame's addresses (our VTEP, the peer's VTEP).
    pub inner_src: MacAddr,
    pub inner_dst: MacAddr,
    /// Largest inner IPv4 packet that fits the uplink MTU.
    pub mtu: u16,
    rewrite: [u8; MAX_REWRITE],
    rewrite_len: u8,
    /// One's-complement sum of the outer IPv4 header with length, ID and
    /// checksum zero: the checksum is `!(base + len + id)`.
    ip_sum_base: u16,
}

const _: () = assert!(MAX_REWRITE == 50 && UDP_AT == 34);

impl Tunnel {
    /// A VXLAN tunnel to `remote` whose VTEP answers to `remote_vtep`.
    pub fn vxlan(
        node: &NodeParams,
        remote: Ipv4Addr,
        remote_vtep: MacAddr,
        nh_mac: Option<MacAddr>,
    ) -> Tunnel {
        let mut t = Tunnel::blank(Encap::Vxlan, node, remote, nh_mac, vxlan::OVERHEAD);
        t.inner_src = node.vtep_mac;
        t.inner_dst = remote_vtep;
        t.mtu = node.uplink_mtu.saturating_sub(vxlan::OVERHEAD as u16);
        let r = &mut t.rewrite[UDP_AT..];
        let mut u = udp::Packet::new_unchecked(&mut r[..udp::HEADER_LEN]);
        u.set_src_port(0);
        u.set_dst_port(node.vxlan_port);
        u.set_len(0);
        u.set_checksum(0);
        vxlan::Repr { vni: node.vni }
            .emit(&mut vxlan::Packet::new_unchecked(&mut r[udp::HEADER_LEN..]));
        t.seal_ip(node.node_ip, ipv4::Protocol::Udp, 0);
        t
    }

    /// An IPIP tunnel to `remote`.
    pub fn ipip(node: &NodeParams, remote: Ipv4Addr, nh_mac: Option<MacAddr>) -> Tunnel {
        let mut t = Tunnel::blank(
            Encap::Ipip,
            node,
            remote,
            nh_mac,
            eth::HEADER_LEN + ipip::OVERHEAD,
        );
        t.mtu = node.uplink_mtu.saturating_sub(ipip::OVERHEAD as u16);
        t.seal_ip(node.node_ip, ipv4::Protocol::Ipip, ipv4::FLAG_DF);
        t
    }

    /// Native routing through the underlay next hop `via`.
    pub fn native(node: &NodeParams, via: Ipv4Addr, nh_mac: Option<MacAddr>) -> Tunnel {
        let mut t = Tunnel::blank(Encap::Native, node, via, nh_mac, eth::HEADER_LEN);
        t.mtu = node.uplink_mtu;
        t
    }

    fn blank(
        encap: Encap,
        node: &NodeParams,
        remote: Ipv4Addr,
        nh_mac: Option<MacAddr>,
        len: usize,
    ) -> Tunnel {
        let mut t = Tunnel {
            encap,
            remote,
            nh_mac,
            inner_src: MacAddr::ZERO,
            inner_dst: MacAddr::ZERO,
            mtu: 0,
            rewrite: [0; MAX_REWRITE],
            rewrite_len: len as u8,
            ip_sum_base: 0,
        };
        eth::Repr {
            src: node.uplink_mac,
            dst: nh_mac.unwrap_or(MacAddr::ZERO),
            ethertype: eth::EtherType::Ipv4,
        }
        .emit(&mut eth::Frame::new_unchecked(&mut t.rewrite[..]));
        t
    }

    fn seal_ip(&mut self, src: Ipv4Addr, proto: ipv4::Protocol, flags: u16) {
        let mut ip = ipv4::Packet::new_unchecked(&mut self.rewrite[IP_AT..UDP_AT]);
        ip.set_version_ihl(ipv4::HEADER_LEN);
        ip.set_dscp_ecn(0);
        ip.set_total_len(0);
        ip.set_ident(0);
        ip.set_flags_frag(flags);
        ip.set_ttl(ipip::OUTER_TTL);
        ip.set_protocol(proto);
        ip.set_checksum(0);
        ip.set_src_addr(src);
        ip.set_dst_addr(self.remote);
        self.ip_sum_base = checksum::sum(&self.rewrite[IP_AT..UDP_AT]);
    }

    /// Whether packets can leave through this entry now.
    #[inline]
    pub fn is_resolved(&self) -> bool {
        self.nh_mac.is_some()
    }

    /// The prebuilt outer header.
    #[inline]
    pub fn rewrite(&self) -> &[u8] {
        &self.rewrite[..usize::from(self.rewrite_len)]
    }

    /// Outer header length.
    #[inline]
    pub fn rewrite_len(&self) -> usize {
        usize::from(self.rewrite_len)
    }

    /// Writes the outer headers in front of a packet: `out` is exactly
    /// `rewrite_len()` bytes, `ip_len` is the outer IPv4 total length, `ident` the
    /// outer IPv4 ID and `sport` the VXLAN UDP source port.
    #[inline(always)]
    pub fn write_outer(&self, out: &mut [u8], ip_len: u16, ident: u16, sport: u16) {
        let n = usize::from(self.rewrite_len);
        out[..n].copy_from_slice(&self.rewrite[..n]);
        if self.encap == Encap::Native {
            return;
        }
        out[IP_AT + 2..IP_AT + 4].copy_from_slice(&ip_len.to_be_bytes());
        out[IP_AT + 4..IP_AT + 6].copy_from_slice(&ident.to_be_bytes());
        let c = !checksum::fold(u64::from(self.ip_sum_base) + u64::from(ip_len) + u64::from(ident));
        out[IP_AT + 10..IP_AT + 12].copy_from_slice(&c.to_be_bytes());
        if self.encap == Encap::Vxlan {
            out[UDP_AT..UDP_AT + 2].copy_from_slice(&sport.to_be_bytes());
            let ulen = ip_len - ipv4::HEADER_LEN as u16;
            out[UDP_AT + 4..UDP_AT + 6].copy_from_slice(&ulen.to_be_bytes());
        }
    }
}

impl Tunnel {
    /// [`Tunnel::write_outer`] for a VXLAN entry into a fixed 50-byte area:
    /// constant offsets, no length checks. False (nothing written) if this
    /// entry is not VXLAN.
    #[inline(always)]
    pub fn write_vxlan(
        &self,
        out: &mut [u8; MAX_REWRITE],
        ip_len: u16,
        ident: u16,
        sport: u16,
    ) -> bool {
        if self.encap != Encap::Vxlan {
            return false;
        }
        *out = self.rewrite;
        self.patch_ip(out, ip_len, ident);
        out[UDP_AT..UDP_AT + 2].copy_from_slice(&sport.to_be_bytes());
        let ulen = ip_len.wrapping_sub(ipv4::HEADER_LEN as u16);
        out[UDP_AT + 4..UDP_AT + 6].copy_from_slice(&ulen.to_be_bytes());
        true
    }

    /// [`Tunnel::write_outer`] for an IPIP entry into a fixed 34-byte area.
    /// False (nothing written) if this entry is not IPIP.
    #[inline(always)]
    pub fn write_ipip(&self, out: &mut [u8; UDP_AT], ip_len: u16, ident: u16) -> bool {
        if self.encap != Encap::Ipip {
            return false;
        }
        let r: &[u8; UDP_AT] = self.rewrite.first_chunk().unwrap_or(&[0; UDP_AT]);
        *out = *r;
        self.patch_ip(out, ip_len, ident);
        true
    }

    /// The Ethernet rewrite of any entry (native output: next hop's MAC,
    /// uplink MAC, IPv4).
    #[inline(always)]
    pub fn eth_rewrite(&self) -> &[u8; eth::HEADER_LEN] {
        self.rewrite.first_chunk().unwrap_or(&[0; eth::HEADER_LEN])
    }

    #[inline(always)]
    fn patch_ip<const N: usize>(&self, out: &mut [u8; N], ip_len: u16, ident: u16) {
        out[IP_AT + 2..IP_AT + 4].copy_from_slice(&ip_len.to_be_bytes());
        out[IP_AT + 4..IP_AT + 6].copy_from_slice(&ident.to_be_bytes());
        let c = !checksum::fold(u64::from(self.ip_sum_base) + u64::from(ip_len) + u64::from(ident));
        out[IP_AT + 10..IP_AT + 12].copy_from_slice(&c.to_be_bytes());
    }
}

/// The tunnel/adjacency entries and the set of addresses tunnel packets are
/// accepted from (known nodes). Immutable; rebuilt by the control plane.
#[derive(Debug, Clone, Default)]
pub struct TunnelTable {
    tunnels: Vec<Tunnel>,
    sources: HashSet<u32>,
}

impl TunnelTable {
    /// `sources`: the underlay addresses of known nodes.
    pub fn new(tunnels: Vec<Tunnel>, sources: impl IntoIterator<Item = Ipv4Addr>) -> TunnelTable {
        TunnelTable {
            tunnels,
            sources: sources.into_iter().map(u32::from).collect(),
        }
    }

    #[inline(always)]
    pub fn get(&self, id: TunnelId) -> Option<&Tunnel> {
        self.tunnels.get(id.0 as usize)
    }

    /// Whether tunnel packets from this (host-order) address are accepted.
    #[inline(always)]
    pub fn is_known_source(&self, src: u32) -> bool {
        self.sources.contains(&src)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TunnelId, &Tunnel)> {
        self.tunnels
            .iter()
            .enumerate()
            .map(|(i, t)| (TunnelId(i as u32), t))
    }

    pub fn sources(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.sources.iter().map(|&a| Ipv4Addr::from(a))
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }
}

/// Linux's choice of VXLAN source port from a flow hash: scaled into the local
/// port range 32768..61000 (`udp_flow_src_port`), so ECMP in the underlay
/// spreads flows and one flow stays on one path.
#[inline(always)]
pub fn entropy_port(hash: u32) -> u16 {
    const MIN: u32 = 32768;
    const MAX: u32 = 61000;
    ((u64::from(hash) * u64::from(MAX - MIN)) >> 32) as u16 + MIN as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Mode;

    fn node() -> NodeParams {
        NodeParams::new(
            Mode::Vxlan,
            Ipv4Addr::new(198, 18, 0, 1),
            MacAddr([2, 0, 0xc6, 0x12, 0, 1]),
            1500,
        )
    }

    #[test]
    fn vxlan_outer_header_is_valid() {
        let n = node();
        let t = Tunnel::vxlan(
            &n,
            Ipv4Addr::new(198, 18, 0, 2),
            MacAddr([2, 0x5e, 0, 0, 0, 2]),
            Some(MacAddr([2, 0, 0xc6, 0x12, 0, 2])),
        );
        assert_eq!(t.rewrite_len(), 50);
        assert_eq!(t.mtu, 1450);
        let mut out = [0u8; 50];
        t.write_outer(&mut out, 100, 0x1234, entropy_port(0xdead_beef));
        let ip = ipv4::Packet::new_unchecked(&out[14..34]);
        assert!(ip.verify_checksum());
        assert_eq!(ip.total_len(), 100);
        assert_eq!(ip.src_addr(), n.node_ip);
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(198, 18, 0, 2));
        let u = udp::Packet::new_unchecked(&out[34..]);
        assert_eq!(u.dst_port(), 4789);
        assert_eq!(u.len(), 80);
        assert!((32768..61000).contains(&u.src_port()));
        let v = vxlan::Packet::new_unchecked(&out[42..]);
        assert!(v.is_valid());
        assert_eq!(v.vni(), 4096);
        // Checksum stays valid across the whole range of lengths and IDs.
        for (len, id) in [(20u16, 0u16), (1500, 0xffff), (65535, 1), (9000, 0x8000)] {
            t.write_outer(&mut out, len, id, 40000);
            assert!(
                ipv4::Packet::new_unchecked(&out[14..34]).verify_checksum(),
                "{len} {id}"
            );
        }
    }

    #[test]
    fn ipip_and_native() {
        let n = node();
        let t = Tunnel::ipip(
            &n,
            Ipv4Addr::new(198, 18, 0, 3),
            Some(MacAddr([2, 0, 0, 0, 0, 3])),
        );
        assert_eq!((t.rewrite_len(), t.mtu), (34, 1480));
        let mut out = [0u8; 34];
        t.write_outer(&mut out, 84, 7, 0);
        let ip = ipv4::Packet::new_unchecked(&out[14..]);
        assert!(ip.verify_checksum());
        assert_eq!(ip.protocol(), ipv4::Protocol::Ipip);
        let nat = Tunnel::native(&n, Ipv4Addr::new(198, 18, 0, 3), None);
        assert!(!nat.is_resolved());
        assert_eq!(nat.rewrite_len(), 14);
    }

    #[test]
    fn fixed_writers_match_write_outer() {
        let n = node();
        let v = Tunnel::vxlan(
            &n,
            Ipv4Addr::new(198, 18, 0, 2),
            MacAddr([2, 0x5e, 0, 0, 0, 2]),
            Some(MacAddr([2, 0, 0xc6, 0x12, 0, 2])),
        );
        let i = Tunnel::ipip(
            &n,
            Ipv4Addr::new(198, 18, 0, 3),
            Some(MacAddr([2, 0, 0, 0, 0, 3])),
        );
        for (len, id, sport) in [
            (84u16, 1u16, 40000u16),
            (1500, 0xffff, 61000),
            (20, 0, 32768),
        ] {
            let (mut a, mut b) = ([0u8; 50], [0u8; 50]);
            v.write_outer(&mut a, len, id, sport);
            assert!(v.write_vxlan(&mut b, len, id, sport));
            assert_eq!(a, b);
            let (mut a, mut b) = ([0u8; 34], [0u8; 34]);
            i.write_outer(&mut a, len, id, 0);
            assert!(i.write_ipip(&mut b, len, id));
            assert_eq!(a, b);
        }
        assert!(!i.write_vxlan(&mut [0; 50], 84, 1, 1));
        assert!(!v.write_ipip(&mut [0; 34], 84, 1));
        assert_eq!(&v.eth_rewrite()[..], &v.rewrite()[..14]);
    }

    #[test]
    fn entropy_range() {
        assert_eq!(entropy_port(0), 32768);
        assert!(entropy_port(u32::MAX) < 61000);
    }
}
