//! Input stages: uplink-input (VXLAN / IPIP decapsulation and native input),
//! ethernet-input (pod and host ports, with the source MAC check), arp (proxy
//! answers for the gateway) and ipv4-input (validation, anti-spoofing, TTL).

use super::{at, drop, goto, icmp_kind, Counters, Next};
use crate::buf::{Meta, Packet, PortId};
use crate::drop::DropReason as R;
use crate::flow::FlowKey;
use crate::table::{NextHop, Tables};
use crate::wire::{arp, eth, ipv4, udp, vxlan};

const ETH: usize = eth::HEADER_LEN;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// uplink-input: frames from the underlay. VXLAN and IPIP addressed to this
/// node are checked (known source node, flags, VNI) and decapsulated; plain
/// IPv4 to a local pod is native input; anything else is not ours.
pub fn uplink_input(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let node = &*t.node;
    let node_ip = u32::from(node.node_ip);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::UplinkInput)) {
        let d = p.data();
        if d.len() < ETH {
            pending |= drop(p, R::EthTruncated);
            continue;
        }
        match [d[12], d[13]] {
            ETHERTYPE_IPV4 => {}
            ETHERTYPE_ARP => {
                pending |= drop(p, R::ArpOnUplink);
                continue;
            }
            _ => {
                pending |= drop(p, R::UnsupportedEthertype);
                continue;
            }
        }
        let ip = match checked_ipv4(&d[ETH..]) {
            Ok(ip) => ip,
            Err(r) => {
                pending |= drop(p, r);
                continue;
            }
        };
        let hl = ip.header_len();
        let total = usize::from(ip.total_len());
        let proto = ip.protocol();
        if ip.dst_u32() != node_ip {
            // Native input: the underlay routed a pod address to us.
            match t.routes.lookup(ip.dst_u32()) {
                Some(NextHop::Local) => {
                    p.truncate(ETH + total);
                    p.meta.l3 = ETH as u16;
                    c.native_in += 1;
                    pending |= goto(p, Next::Ipv4Input);
                }
                _ => pending |= drop(p, R::NotForNode),
            }
            continue;
        }
        let tunnel_src = ip.src_u32();
        match proto {
            ipv4::Protocol::Udp => {
                let l4 = &d[ETH + hl..ETH + total];
                let Ok(u) = udp::Packet::new_checked(l4) else {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                };
                if u.dst_port() != node.vxlan_port {
                    pending |= drop(p, R::NotForNode);
                    continue;
                }
                if !node.accept_vxlan {
                    pending |= drop(p, R::TunnelModeMismatch);
                    continue;
                }
                if !t.tunnels.is_known_source(tunnel_src) {
                    pending |= drop(p, R::UnknownTunnelSource);
                    continue;
                }
                let payload = u.payload();
                let Ok(vx) = vxlan::Packet::new_checked(payload) else {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                };
                if !vx.is_valid() {
                    pending |= drop(p, R::VxlanBadFlags);
                    continue;
                }
                if vx.vni() != node.vni {
                    pending |= drop(p, R::VxlanWrongVni);
                    continue;
                }
                let inner = vx.payload();
                if inner.len() < ETH {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                }
                if inner[12..14] != ETHERTYPE_IPV4 {
                    pending |= drop(p, R::InnerNotIpv4);
                    continue;
                }
                let outer = ETH + hl + udp::HEADER_LEN + vxlan::HEADER_LEN;
                let end = ETH + hl + usize::from(u.len());
                p.truncate(end);
                p.strip(outer);
                c.vxlan_decap += 1;
            }
            ipv4::Protocol::Ipip => {
                if !node.accept_ipip {
                    pending |= drop(p, R::TunnelModeMismatch);
                    continue;
                }
                if !t.tunnels.is_known_source(tunnel_src) {
                    pending |= drop(p, R::UnknownTunnelSource);
                    continue;
                }
                // Strip the outer IPv4 header but keep 14 bytes in front of the
                // inner packet as its (placeholder) Ethernet header: the output
                // stage writes the real one. No copy.
                p.truncate(ETH + total);
                p.strip(hl);
                p.data_mut()[12..14].copy_from_slice(&ETHERTYPE_IPV4);
                c.ipip_decap += 1;
            }
            _ => {
                pending |= drop(p, R::NotForNode);
                continue;
            }
        }
        p.meta.flags |= Meta::FLAG_FROM_TUNNEL;
        p.meta.l3 = ETH as u16;
        pending |= goto(p, Next::Ipv4Input);
    }
    pending
}

/// ethernet-input: frames from pod and host ports. A pod's source MAC must be
/// its own (strict anti-spoofing, as Calico's RPF check on workloads).
pub fn eth_input(t: &Tables, _c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::EthInput)) {
        let d = p.data();
        if d.len() < ETH {
            pending |= drop(p, R::EthTruncated);
            continue;
        }
        let ethertype = [d[12], d[13]];
        if p.meta.in_port.is_pod() {
            let Some(ep) = t.endpoints.by_port(p.meta.in_port) else {
                pending |= drop(p, R::UnknownPort);
                continue;
            };
            if d[6..12] != t.endpoints.get(ep).mac.0 {
                pending |= drop(p, R::SpoofedSourceMac);
                continue;
            }
            p.meta.src_ep = ep;
        }
        pending |= match ethertype {
            ETHERTYPE_IPV4 => {
                p.meta.l3 = ETH as u16;
                goto(p, Next::Ipv4Input)
            }
            ETHERTYPE_ARP => goto(p, Next::Arp),
            _ => drop(p, R::UnsupportedEthertype),
        };
    }
    pending
}

/// arp: answers every request on a pod or host port with the gateway MAC (proxy
/// ARP, so a pod's only neighbour is the forwarder), except a pod's probe for its
/// own address (duplicate address detection must get no answer).
pub fn arp(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    let gw = t.node.gateway_mac;
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::Arp)) {
        let Ok(a) = arp::Packet::new_checked(&p.data()[ETH..]).and_then(|a| arp::Repr::parse(&a))
        else {
            pending |= drop(p, R::ArpMalformed);
            continue;
        };
        if a.operation != arp::Operation::Request || a.target_ip == a.sender_ip {
            pending |= drop(p, R::ArpNotRequest);
            continue;
        }
        if p.meta.src_ep != Meta::NO_EP
            && u32::from(a.target_ip) == u32::from(t.endpoints.get(p.meta.src_ep).ip)
        {
            pending |= drop(p, R::ArpNotRequest);
            continue;
        }
        let reply = arp::Repr {
            operation: arp::Operation::Reply,
            sender_hw: gw,
            sender_ip: a.target_ip,
            target_hw: a.sender_hw,
            target_ip: a.sender_ip,
        };
        p.truncate(ETH + arp::PACKET_LEN);
        let d = p.data_mut();
        eth::Repr {
            src: gw,
            dst: a.sender_hw,
            ethertype: eth::EtherType::Arp,
        }
        .emit(&mut eth::Frame::new_unchecked(&mut d[..]));
        reply.emit(&mut arp::Packet::new_unchecked(&mut d[ETH..]));
        p.meta.out_port = p.meta.in_port;
        c.arp_replies += 1;
        pending |= goto(p, Next::Tx);
    }
    pending
}

/// ipv4-input: validates the header (version, lengths, checksum), trims
/// Ethernet padding, checks a pod's source address, expires TTL and extracts
/// the flow key.
pub fn ipv4_input(t: &Tables, _c: &mut Counters, pkts: &mut [Packet], egress_policy: bool) -> u32 {
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::Ipv4Input)) {
        let l3 = usize::from(p.meta.l3);
        let d = p.data();
        let ip = match checked_ipv4(&d[l3..]) {
            Ok(ip) => ip,
            Err(r) => {
                pending |= drop(p, r);
                continue;
            }
        };
        if p.meta.src_ep != Meta::NO_EP
            && ip.src_u32() != u32::from(t.endpoints.get(p.meta.src_ep).ip)
        {
            pending |= drop(p, R::SpoofedSourceIp);
            continue;
        }
        let ttl = ip.ttl();
        let total = usize::from(ip.total_len());
        p.meta.flow = FlowKey::from_ipv4(&d[l3..l3 + total]);
        p.truncate(l3 + total);
        if ttl <= 1 {
            p.meta.aux = icmp_kind::TIME_EXCEEDED;
            p.meta.drop = R::TtlExpired;
            pending |= goto(p, Next::IcmpError);
            continue;
        }
        pending |= if egress_policy && p.meta.src_ep != Meta::NO_EP {
            goto(p, Next::PolicyEgress)
        } else {
            goto(p, Next::Lookup)
        };
    }
    pending
}

/// An IPv4 header that is whole, version 4 and whose checksum verifies (outer
/// headers in uplink-input, every routed packet in ipv4-input), or why not.
#[inline(always)]
fn checked_ipv4(b: &[u8]) -> Result<ipv4::Packet<&[u8]>, R> {
    let ip = ipv4::Packet::new_checked(b).map_err(|e| match e {
        crate::wire::Error::Malformed { .. } => R::Ipv4BadVersion,
        _ => R::Ipv4Truncated,
    })?;
    if ip.version() != 4 {
        return Err(R::Ipv4BadVersion);
    }
    if !ip.verify_checksum() {
        return Err(R::Ipv4BadChecksum);
    }
    Ok(ip)
}

/// Sets up packets arriving on `port` for the first stage.
#[inline]
pub fn start(pkts: &mut [Packet], port: PortId) -> u32 {
    let first = if port == PortId::UPLINK {
        Next::UplinkInput
    } else {
        Next::EthInput
    };
    for p in pkts.iter_mut() {
        p.meta = Meta {
            in_port: port,
            next: first as u8,
            src_ep: Meta::NO_EP,
            dst_ep: Meta::NO_EP,
            ..Meta::default()
        };
    }
    first.bit()
}
