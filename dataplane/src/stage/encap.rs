//! Output stages: local-delivery, host-output, native-output, vxlan-encap and
//! ipip-encap. Each decrements the TTL (the node is a router hop) with an
//! incremental checksum update and writes the outgoing headers.
//!
//! Packets reach them from ipv4-input, so their IPv4 header sits right after
//! the Ethernet header (`meta.l3 == 14`) and is whole: the common path reads
//! and writes both through one fixed-size array (constant offsets, no bounds
//! checks); anything else takes the general path, never a panic.

use super::{at, drop, goto, Counters, Next};
use crate::buf::Packet;
use crate::drop::DropReason as R;
use crate::table::{tunnel, Tables, Tunnel, TunnelId};
use crate::wire::{eth, ipv4, MacAddr};

const ETH: usize = eth::HEADER_LEN;
const IP: usize = ipv4::HEADER_LEN;
/// Ethernet + IPv4 header without options.
const HDRS: usize = ETH + IP;
const VXLAN: usize = tunnel::MAX_REWRITE;

/// Ethernet header plus the IPv4 header's TTL/checksum words: the TTL is
/// decremented with an incremental checksum update (RFC 1141; see
/// [`ipv4::Packet::decrement_ttl`]) and the Ethernet addresses written.
#[inline(always)]
fn route_hdrs(h: &mut [u8; HDRS], dst: &[u8; 6], src: &[u8; 6]) {
    dec_ttl(h);
    h[0..6].copy_from_slice(dst);
    h[6..12].copy_from_slice(src);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
}

#[inline(always)]
fn dec_ttl(h: &mut [u8; HDRS]) {
    h[ETH + 8] = h[ETH + 8].wrapping_sub(1);
    let sum = u32::from(u16::from_be_bytes([h[ETH + 10], h[ETH + 11]])) + 0x0100;
    h[ETH + 10..ETH + 12].copy_from_slice(&((sum + (sum >> 16)) as u16).to_be_bytes());
}

/// [`route_hdrs`] for any packet: the fixed-size path when the IPv4 header
/// follows the Ethernet header, the general one otherwise. False if the frame
/// is too short for either (never the case after ipv4-input).
#[inline(always)]
fn route(p: &mut Packet, dst: &[u8; 6], src: &[u8; 6]) -> bool {
    if usize::from(p.meta.l3) == ETH {
        if let Some(h) = p.head_mut::<HDRS>() {
            route_hdrs(h, dst, src);
            return true;
        }
    }
    route_slow(p, dst, src)
}

#[cold]
fn route_slow(p: &mut Packet, dst: &[u8; 6], src: &[u8; 6]) -> bool {
    let l3 = usize::from(p.meta.l3);
    let d = p.data_mut();
    if d.len() < ETH || d.len() < l3 + IP {
        return false;
    }
    ipv4::Packet::new_unchecked(&mut d[l3..]).decrement_ttl();
    d[0..6].copy_from_slice(dst);
    d[6..12].copy_from_slice(src);
    d[12..14].copy_from_slice(&[0x08, 0x00]);
    true
}

/// The tunnel entry of the last packet, remembered for the batch
/// (consecutive packets usually share one).
struct LastTunnel<'t> {
    id: u32,
    tun: Option<&'t Tunnel>,
}

impl<'t> LastTunnel<'t> {
    #[inline(always)]
    fn new() -> Self {
        LastTunnel {
            id: u32::MAX,
            tun: None,
        }
    }

    #[inline(always)]
    fn get(&mut self, t: &'t Tables, id: u32) -> Option<&'t Tunnel> {
        if id != self.id {
            self.miss(t, id);
        }
        self.tun
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, t: &'t Tables, id: u32) {
        self.id = id;
        self.tun = t.tunnels.get(TunnelId(id));
    }
}

/// The output stages' per-packet work and per-batch state (the last tunnel
/// entry): run by each output stage over the
/// batch, and by the fused input paths packet by packet.
pub(super) struct Output<'t> {
    last: LastTunnel<'t>,
}

impl<'t> Output<'t> {
    #[inline(always)]
    pub(super) fn new(_t: &Tables) -> Output<'t> {
        Output {
            last: LastTunnel::new(),
        }
    }

    /// local-delivery for one packet.
    #[inline(always)]
    pub(super) fn local(&mut self, t: &Tables, c: &mut Counters, p: &mut Packet) -> u32 {
        let mac = t.endpoints.get(p.meta.dst_ep).mac.0;
        if !route(p, &mac, &t.node.gateway_mac.0) {
            return drop(p, R::Ipv4Truncated);
        }
        c.local_delivered += 1;
        goto(p, Next::Tx)
    }

    /// host-output for one packet.
    #[inline(always)]
    pub(super) fn host(&mut self, t: &Tables, c: &mut Counters, p: &mut Packet) -> u32 {
        let host = t.node.host_mac.unwrap_or(MacAddr::BROADCAST).0;
        if !route(p, &host, &t.node.gateway_mac.0) {
            return drop(p, R::Ipv4Truncated);
        }
        c.to_host += 1;
        goto(p, Next::Tx)
    }

    /// native-output for one packet.
    #[inline(always)]
    pub(super) fn native(&mut self, t: &'t Tables, c: &mut Counters, p: &mut Packet) -> u32 {
        let Some(tun) = self.last.get(t, p.meta.aux) else {
            return drop(p, R::NoRoute);
        };
        let e = tun.eth_rewrite();
        // The common case: the whole prebuilt Ethernet header in one copy.
        let fast = if usize::from(p.meta.l3) == ETH {
            if let Some(h) = p.head_mut::<HDRS>() {
                dec_ttl(h);
                h[..ETH].copy_from_slice(e);
                true
            } else {
                false
            }
        } else {
            false
        };
        if !fast {
            let (Ok(dst), Ok(src)) = (e[0..6].try_into(), e[6..12].try_into()) else {
                return drop(p, R::NoRoute);
            };
            if !route_slow(p, dst, src) {
                return drop(p, R::Ipv4Truncated);
            }
        }
        c.native_out += 1;
        goto(p, Next::Tx)
    }

    /// vxlan-encap for one packet.
    #[inline(always)]
    pub(super) fn vxlan(
        &mut self,
        t: &'t Tables,
        c: &mut Counters,
        ident: &mut u16,
        p: &mut Packet,
    ) -> u32 {
        let Some(tun) = self.last.get(t, p.meta.aux) else {
            return drop(p, R::NoRoute);
        };
        if !route(p, &tun.inner_dst.0, &tun.inner_src.0) {
            return drop(p, R::Ipv4Truncated);
        }
        let inner_len = p.len();
        let sport = tunnel::entropy_port(p.meta.flow.hash());
        let id = ident.wrapping_add(1);
        let ip_len = (inner_len + VXLAN - ETH) as u16;
        let written = match p.prepend_array::<VXLAN>() {
            Some(outer) => tun.write_vxlan(outer, ip_len, id, sport),
            None => return drop(p, R::NoHeadroom),
        };
        if !written {
            // Not a VXLAN entry (a table the control plane got wrong): write
            // whatever it holds, as the general path always did.
            p.strip(VXLAN);
            let Some(outer) = p.prepend(tun.rewrite_len()) else {
                return drop(p, R::NoHeadroom);
            };
            tun.write_outer(outer, ip_len, id, sport);
        }
        *ident = id;
        p.meta.l3 = 0;
        // A superframe's lengths above are a segment's business: the port that
        // cuts it or sends it whole writes each segment's own.
        p.meta.gso_ip = p.meta.gso_ip.wrapping_add((p.len() - inner_len) as u8);
        c.vxlan_encap += 1;
        goto(p, Next::Tx)
    }

    /// ipip-encap for one packet.
    #[inline(always)]
    pub(super) fn ipip(
        &mut self,
        t: &'t Tables,
        c: &mut Counters,
        ident: &mut u16,
        p: &mut Packet,
    ) -> u32 {
        let Some(tun) = self.last.get(t, p.meta.aux) else {
            return drop(p, R::NoRoute);
        };
        let ok = if usize::from(p.meta.l3) == ETH {
            if let Some(h) = p.head_mut::<HDRS>() {
                dec_ttl(h);
                true
            } else {
                false
            }
        } else {
            route_slow(p, &[0; 6], &[0; 6])
        };
        if !ok {
            return drop(p, R::Ipv4Truncated);
        }
        let ip_len = (p.len() - ETH + IP) as u16;
        let id = ident.wrapping_add(1);
        if p.prepend_array::<IP>().is_none() {
            return drop(p, R::NoHeadroom);
        }
        let written = match p.head_mut::<HDRS>() {
            Some(h) => tun.write_ipip(h, ip_len, id),
            None => false,
        };
        if !written {
            // Not an IPIP entry (a table the control plane got wrong): write
            // whatever it holds, as the general path always did.
            let Some(out) = p.data_mut().get_mut(..tun.rewrite_len()) else {
                return drop(p, R::NoRoute);
            };
            tun.write_outer(out, ip_len, id, 0);
        }
        *ident = id;
        p.meta.l3 = 0;
        p.meta.gso_ip = p.meta.gso_ip.wrapping_add(IP as u8);
        c.ipip_encap += 1;
        goto(p, Next::Tx)
    }
}

/// local-delivery: to a pod on this node, from the gateway MAC.
pub fn local_delivery(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let mut out = Output::new(t);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::LocalDelivery)) {
        pending |= out.local(t, c, p);
    }
    pending
}

/// host-output: to the node's kernel through the host port.
pub fn host_output(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let mut out = Output::new(t);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::HostOutput)) {
        pending |= out.host(t, c, p);
    }
    pending
}

/// native-output: out of the uplink to the underlay next hop, unencapsulated.
pub fn native_output(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let mut out = Output::new(t);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::NativeOutput)) {
        pending |= out.native(t, c, p);
    }
    pending
}

/// vxlan-encap: inner Ethernet rewritten VTEP to VTEP, then the prebuilt outer
/// headers are copied into the headroom and patched (lengths, ID, checksum,
/// entropy source port).
pub fn vxlan_encap(t: &Tables, c: &mut Counters, ident: &mut u16, pkts: &mut [Packet]) -> u32 {
    let mut out = Output::new(t);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::VxlanEncap)) {
        pending |= out.vxlan(t, c, ident, p);
    }
    pending
}

/// ipip-encap: the inner Ethernet header is replaced by outer Ethernet + IPv4.
pub fn ipip_encap(t: &Tables, c: &mut Counters, ident: &mut u16, pkts: &mut [Packet]) -> u32 {
    let mut out = Output::new(t);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::IpipEncap)) {
        pending |= out.ipip(t, c, ident, p);
    }
    pending
}
