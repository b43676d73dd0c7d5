//! Output stages: local-delivery, host-output, native-output, vxlan-encap and
//! ipip-encap. Each decrements the TTL (the node is a router hop) with an
//! incremental checksum update and writes the outgoing headers.

use super::{at, drop, goto, Counters, Next};
use crate::buf::Packet;
use crate::drop::DropReason as R;
use crate::table::{tunnel, Tables, TunnelId};
use crate::wire::{eth, ipv4, MacAddr};

const ETH: usize = eth::HEADER_LEN;

#[inline(always)]
fn write_eth(d: &mut [u8], dst: MacAddr, src: MacAddr) {
    d[0..6].copy_from_slice(&dst.0);
    d[6..12].copy_from_slice(&src.0);
    d[12..14].copy_from_slice(&[0x08, 0x00]);
}

#[inline(always)]
fn dec_ttl(p: &mut Packet) {
    let l3 = usize::from(p.meta.l3);
    ipv4::Packet::new_unchecked(&mut p.data_mut()[l3..]).decrement_ttl();
}

/// local-delivery: to a pod on this node, from the gateway MAC.
pub fn local_delivery(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let gw = t.node.gateway_mac;
    let mut n = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::LocalDelivery)) {
        dec_ttl(p);
        let mac = t.endpoints.get(p.meta.dst_ep).mac;
        write_eth(p.data_mut(), mac, gw);
        goto(p, Next::Tx);
        n += 1;
    }
    c.local_delivered += n;
    if n > 0 {
        Next::Tx.bit()
    } else {
        0
    }
}

/// host-output: to the node's kernel through the host port.
pub fn host_output(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let gw = t.node.gateway_mac;
    let host = t.node.host_mac.unwrap_or(MacAddr::BROADCAST);
    let mut n = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::HostOutput)) {
        dec_ttl(p);
        write_eth(p.data_mut(), host, gw);
        goto(p, Next::Tx);
        n += 1;
    }
    c.to_host += n;
    if n > 0 {
        Next::Tx.bit()
    } else {
        0
    }
}

/// native-output: out of the uplink to the underlay next hop, unencapsulated.
pub fn native_output(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::NativeOutput)) {
        let Some(tun) = t.tunnels.get(TunnelId(p.meta.aux)) else {
            pending |= drop(p, R::NoRoute);
            continue;
        };
        dec_ttl(p);
        tun.write_outer(&mut p.data_mut()[..ETH], 0, 0, 0);
        c.native_out += 1;
        pending |= goto(p, Next::Tx);
    }
    pending
}

/// vxlan-encap: inner Ethernet rewritten VTEP to VTEP, then the prebuilt outer
/// headers are copied into the headroom and patched (lengths, ID, checksum,
/// entropy source port).
pub fn vxlan_encap(t: &Tables, c: &mut Counters, ident: &mut u16, pkts: &mut [Packet]) -> u32 {
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::VxlanEncap)) {
        let Some(tun) = t.tunnels.get(TunnelId(p.meta.aux)) else {
            pending |= drop(p, R::NoRoute);
            continue;
        };
        dec_ttl(p);
        write_eth(p.data_mut(), tun.inner_dst, tun.inner_src);
        let inner_len = p.len();
        let sport = tunnel::entropy_port(p.meta.flow.hash());
        let Some(outer) = p.prepend(tun.rewrite_len()) else {
            pending |= drop(p, R::NoHeadroom);
            continue;
        };
        *ident = ident.wrapping_add(1);
        let ip_len = (inner_len + tun.rewrite_len() - ETH) as u16;
        tun.write_outer(outer, ip_len, *ident, sport);
        p.meta.l3 = 0;
        c.vxlan_encap += 1;
        pending |= goto(p, Next::Tx);
    }
    pending
}

/// ipip-encap: the inner Ethernet header is replaced by outer Ethernet + IPv4.
pub fn ipip_encap(t: &Tables, c: &mut Counters, ident: &mut u16, pkts: &mut [Packet]) -> u32 {
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::IpipEncap)) {
        let Some(tun) = t.tunnels.get(TunnelId(p.meta.aux)) else {
            pending |= drop(p, R::NoRoute);
            continue;
        };
        dec_ttl(p);
        let inner_ip = p.len() - ETH;
        let grow = tun.rewrite_len() - ETH;
        let Some(outer) = p.prepend(grow) else {
            pending |= drop(p, R::NoHeadroom);
            continue;
        };
        let _ = outer;
        *ident = ident.wrapping_add(1);
        let ip_len = (inner_ip + grow) as u16;
        tun.write_outer(&mut p.data_mut()[..tun.rewrite_len()], ip_len, *ident, 0);
        p.meta.l3 = 0;
        c.ipip_encap += 1;
        pending |= goto(p, Next::Tx);
    }
    pending
}
