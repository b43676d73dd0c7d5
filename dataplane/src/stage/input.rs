//! Input stages: uplink-input (VXLAN / IPIP decapsulation and native input),
//! ethernet-input (pod and host ports, with the source MAC check), arp (proxy
//! answers for the gateway) and ipv4-input (validation, anti-spoofing, TTL).

use super::encap::Output;
use super::lookup::Router;
use super::{at, drop, goto, icmp_kind, Counters, Next};
use crate::buf::{Meta, Packet, PortId};
use crate::drop::DropReason as R;
use crate::flow::FlowKey;
use crate::table::{NextHop, Tables};
use crate::wire::{arp, checksum, eth, ipv4, udp, vxlan};

const ETH: usize = eth::HEADER_LEN;
const IP: usize = ipv4::HEADER_LEN;
const VXLAN_HDRS: usize = udp::HEADER_LEN + vxlan::HEADER_LEN;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// The first VXLAN word with only the I flag set.
const VXLAN_FLAGS_I: u32 = (vxlan::FLAG_I as u32) << 24;

/// Big-endian reads at constant offsets of fixed-size headers: no bounds checks.
#[inline(always)]
fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([h[at], h[at + 1]])
}

#[inline(always)]
fn be32<const N: usize>(h: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// uplink-input: frames from the underlay. VXLAN and IPIP addressed to this
/// node are checked (known source node, flags, VNI) and decapsulated; plain
/// IPv4 to a local pod is native input; anything else is not ours.
pub fn uplink_input(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    uplink::<false>(t, c, &mut 0, pkts, false)
}

/// uplink-input run to completion for an untraced batch: ipv4-input,
/// ipv4-lookup and the output stage follow for each packet in the same pass
/// (a native packet's header is checked once). Same decisions, drop reasons
/// and counters as the stages in turn; a packet bound for a stage that is not
/// fused (policy, icmp-error) is left waiting for it. `policy`: whether the
/// policy stages run.
pub fn uplink_input_fused(
    t: &Tables,
    c: &mut Counters,
    ident: &mut u16,
    pkts: &mut [Packet],
    policy: bool,
) -> u32 {
    uplink::<true>(t, c, ident, pkts, policy)
}

#[inline(always)]
fn uplink<const FUSED: bool>(
    t: &Tables,
    c: &mut Counters,
    ident: &mut u16,
    pkts: &mut [Packet],
    ingress_policy: bool,
) -> u32 {
    // Nothing from the uplink is a local pod's: egress policy never applies,
    // so ipv4-input always hands on to ipv4-lookup.
    let mut router = Router::new(ingress_policy);
    let mut out = Output::new(t);
    let mut route = |p: &mut Packet, next: u32| -> u32 {
        if next == Next::Lookup.bit() {
            router.route_out(t, c, ident, &mut out, p)
        } else {
            next
        }
    };
    // The last native destination found local (one LPM walk per destination).
    let mut native_dst: Option<u32> = None;
    let node = &*t.node;
    let node_ip = u32::from(node.node_ip);
    let (mut vx_n, mut ipip_n, mut native_n) = (0, 0, 0);
    // The last tunnel source found among the known nodes (one hash lookup per
    // peer and batch, not per packet).
    let mut known_src: Option<u32> = None;
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::UplinkInput)) {
        let d = p.data();
        let Some(eh) = d.first_chunk::<ETH>() else {
            pending |= drop(p, R::EthTruncated);
            continue;
        };
        match [eh[12], eh[13]] {
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
        let b = &d[ETH..];
        let (ih, hl, total) = match check_ipv4(b) {
            Ok(x) => x,
            Err(r) => {
                pending |= drop(p, r);
                continue;
            }
        };
        let dst = be32(ih, 16);
        if dst != node_ip {
            // Native input: the underlay routed a pod address to us.
            if native_dst != Some(dst) {
                if t.routes.lookup(dst) != Some(NextHop::Local) {
                    pending |= drop(p, R::NotForNode);
                    continue;
                }
                native_dst = Some(dst);
            }
            native_n += 1;
            // The header was checked just above: ipv4-input's checks would
            // find the same.
            let flow = if hl == IP {
                flow_fast(ih, &b[IP..total])
            } else {
                FlowKey::from_ipv4(&b[..total])
            };
            let ttl = ih[8];
            p.meta.l3 = ETH as u16;
            pending |= if FUSED {
                let next = ipv4_checked(p, ETH + total, ttl, flow, None, false);
                route(p, next)
            } else {
                p.truncate(ETH + total);
                goto(p, Next::Ipv4Input)
            };
            continue;
        }
        let tunnel_src = be32(ih, 12);
        let proto = ih[9];
        let (end, outer) = match proto {
            17 => {
                let l4 = &b[hl..total];
                let Some(u) = l4.first_chunk::<{ udp::HEADER_LEN }>() else {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                };
                let ulen = usize::from(be16(u, 4));
                if ulen < udp::HEADER_LEN || ulen > l4.len() {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                }
                if be16(u, 2) != node.vxlan_port {
                    pending |= drop(p, R::NotForNode);
                    continue;
                }
                if !node.accept_vxlan {
                    pending |= drop(p, R::TunnelModeMismatch);
                    continue;
                }
                if known_src != Some(tunnel_src) {
                    if !t.tunnels.is_known_source(tunnel_src) {
                        pending |= drop(p, R::UnknownTunnelSource);
                        continue;
                    }
                    known_src = Some(tunnel_src);
                }
                let payload = &l4[udp::HEADER_LEN..ulen];
                let Some(vx) = payload.first_chunk::<{ vxlan::HEADER_LEN }>() else {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                };
                if be32(vx, 0) != VXLAN_FLAGS_I || vx[7] != 0 {
                    pending |= drop(p, R::VxlanBadFlags);
                    continue;
                }
                if be32(vx, 4) >> 8 != node.vni {
                    pending |= drop(p, R::VxlanWrongVni);
                    continue;
                }
                let Some(inner) = payload[vxlan::HEADER_LEN..].first_chunk::<ETH>() else {
                    pending |= drop(p, R::VxlanTruncated);
                    continue;
                };
                if [inner[12], inner[13]] != ETHERTYPE_IPV4 {
                    pending |= drop(p, R::InnerNotIpv4);
                    continue;
                }
                vx_n += 1;
                (ETH + hl + ulen, ETH + hl + VXLAN_HDRS)
            }
            4 => {
                if !node.accept_ipip {
                    pending |= drop(p, R::TunnelModeMismatch);
                    continue;
                }
                if known_src != Some(tunnel_src) {
                    if !t.tunnels.is_known_source(tunnel_src) {
                        pending |= drop(p, R::UnknownTunnelSource);
                        continue;
                    }
                    known_src = Some(tunnel_src);
                }
                ipip_n += 1;
                // Strip the outer IPv4 header but keep 14 bytes in front of the
                // inner packet as its (placeholder) Ethernet header: the output
                // stage writes the real one. No copy.
                (ETH + total, hl)
            }
            _ => {
                pending |= drop(p, R::NotForNode);
                continue;
            }
        };
        p.truncate(end);
        p.strip(outer);
        if p.meta.is_superframe() {
            // Its TCP/IPv4 header is now `outer` bytes nearer the front.
            p.meta.gso_ip = p.meta.gso_ip.wrapping_sub(outer as u8);
        }
        if proto == 4 {
            if let Some(e) = p.head_mut::<ETH>() {
                e[12..14].copy_from_slice(&ETHERTYPE_IPV4);
            }
        }
        p.meta.flags |= Meta::FLAG_FROM_TUNNEL;
        p.meta.l3 = ETH as u16;
        pending |= if FUSED {
            let next = ipv4_one(p, None, false);
            route(p, next)
        } else {
            goto(p, Next::Ipv4Input)
        };
    }
    c.vxlan_decap += vx_n;
    c.ipip_decap += ipip_n;
    c.native_in += native_n;
    pending
}

/// The sending pod of the packets of one port, looked up once per batch
/// (every packet of a batch arrives on the same port).
struct Sender {
    port: PortId,
    ep: Option<(u32, [u8; 6], u32)>,
}

impl Sender {
    #[inline(always)]
    fn new() -> Sender {
        Sender {
            port: PortId(u16::MAX),
            ep: None,
        }
    }

    /// The endpoint on `port`: index, MAC, IPv4.
    #[inline(always)]
    fn get(&mut self, t: &Tables, port: PortId) -> Option<(u32, [u8; 6], u32)> {
        if port != self.port {
            self.miss(t, port);
        }
        self.ep
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, t: &Tables, port: PortId) {
        self.port = port;
        self.ep = t.endpoints.by_port(port).map(|i| {
            let e = t.endpoints.get(i);
            (i, e.mac.0, u32::from(e.ip))
        });
    }
}

/// ethernet-input: frames from pod and host ports. A pod's source MAC must be
/// its own (strict anti-spoofing, as Calico's RPF check on workloads).
pub fn eth_input(t: &Tables, c: &mut Counters, pkts: &mut [Packet]) -> u32 {
    eth::<false>(t, c, pkts, false)
}

/// ethernet-input fused with ipv4-input for an untraced batch: an IPv4 frame
/// is validated in the same pass and one parse (the common frame at constant
/// offsets). Same decisions, drop reasons and counters as the two stages in
/// turn. ipv4-lookup and the output stages then run as their own passes:
/// fusing them in too measured no better on this path.
pub fn eth_input_fused(
    t: &Tables,
    c: &mut Counters,
    pkts: &mut [Packet],
    egress_policy: bool,
) -> u32 {
    eth::<true>(t, c, pkts, egress_policy)
}

#[inline(always)]
fn eth<const FUSED: bool>(
    t: &Tables,
    _c: &mut Counters,
    pkts: &mut [Packet],
    egress_policy: bool,
) -> u32 {
    let mut sender = Sender::new();
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::EthInput)) {
        if FUSED {
            // The common frame in one parse; anything else (and every error)
            // takes the general path below.
            if let Some(next) = eth_ipv4_fast(t, &mut sender, p, egress_policy) {
                pending |= next;
                continue;
            }
        }
        let Some(h) = p.head::<ETH>() else {
            pending |= drop(p, R::EthTruncated);
            continue;
        };
        let ethertype = [h[12], h[13]];
        let mut src_ip = None;
        if p.meta.in_port.is_pod() {
            let Some((ep, mac, ip)) = sender.get(t, p.meta.in_port) else {
                pending |= drop(p, R::UnknownPort);
                continue;
            };
            if h[6..12] != mac {
                pending |= drop(p, R::SpoofedSourceMac);
                continue;
            }
            p.meta.src_ep = ep;
            src_ip = Some(ip);
        }
        pending |= match ethertype {
            ETHERTYPE_IPV4 => {
                p.meta.l3 = ETH as u16;
                if FUSED {
                    ipv4_one(p, src_ip, egress_policy)
                } else {
                    goto(p, Next::Ipv4Input)
                }
            }
            ETHERTYPE_ARP => goto(p, Next::Arp),
            _ => drop(p, R::UnsupportedEthertype),
        };
    }
    pending
}

/// ethernet-input and ipv4-input for the common frame, read at constant
/// offsets: Ethernet + IPv4 without options, total length within the frame.
/// `None` (the packet untouched) for anything else, which the general path
/// then handles; otherwise the packet's next stage bit, with the same checks
/// in the same order as the two stages.
#[inline(always)]
fn eth_ipv4_fast(
    t: &Tables,
    sender: &mut Sender,
    p: &mut Packet,
    egress_policy: bool,
) -> Option<u32> {
    let d = p.data();
    let h = d.first_chunk::<{ ETH + IP }>()?;
    let total = usize::from(be16(h, ETH + 2));
    if [h[12], h[13]] != ETHERTYPE_IPV4 || h[ETH] != 0x45 || total < IP || ETH + total > d.len() {
        return None;
    }
    let ip = ip_of(h);
    let port = p.meta.in_port;
    let mut src = None;
    if port.is_pod() {
        let Some((ep, mac, addr)) = sender.get(t, port) else {
            return Some(drop(p, R::UnknownPort));
        };
        if h[6..12] != mac {
            return Some(drop(p, R::SpoofedSourceMac));
        }
        src = Some((ep, addr));
    }
    let ok = checksum::verify20(ip);
    let flow = flow_fast(ip, &d[ETH + IP..ETH + total]);
    let ttl = ip[8];
    if let Some((ep, _)) = src {
        p.meta.src_ep = ep;
    }
    p.meta.l3 = ETH as u16;
    if !ok {
        return Some(drop(p, R::Ipv4BadChecksum));
    }
    let src_ip = src.map(|(_, a)| a);
    Some(ipv4_checked(
        p,
        ETH + total,
        ttl,
        flow,
        src_ip,
        egress_policy,
    ))
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
    let mut sender = (Meta::NO_EP, 0u32);
    for p in pkts.iter_mut().filter(|p| at(p, Next::Ipv4Input)) {
        let ep = p.meta.src_ep;
        let src_ip = if ep == Meta::NO_EP {
            None
        } else {
            if sender.0 != ep {
                sender = (ep, u32::from(t.endpoints.get(ep).ip));
            }
            Some(sender.1)
        };
        pending |= ipv4_one(p, src_ip, egress_policy);
    }
    pending
}

/// ipv4-input's work on one packet whose IPv4 header is at `meta.l3`;
/// `src_ip` is the sending pod's own address when a local pod sent it.
#[inline(always)]
fn ipv4_one(p: &mut Packet, src_ip: Option<u32>, egress_policy: bool) -> u32 {
    let l3 = usize::from(p.meta.l3);
    if l3 == ETH {
        // The common case, read at constant offsets: version 4, no options,
        // total length within the frame. Anything else is sorted out below.
        let d = p.data();
        if let Some(h) = d.first_chunk::<{ ETH + IP }>() {
            let total = usize::from(be16(h, ETH + 2));
            if h[ETH] == 0x45 && total >= IP && ETH + total <= d.len() {
                if !checksum::verify20(ip_of(h)) {
                    return drop(p, R::Ipv4BadChecksum);
                }
                let flow = flow_fast(ip_of(h), &d[ETH + IP..ETH + total]);
                let ttl = h[ETH + 8];
                return ipv4_checked(p, ETH + total, ttl, flow, src_ip, egress_policy);
            }
        }
    }
    let Some(b) = p.data().get(l3..) else {
        return drop(p, R::Ipv4Truncated);
    };
    let (ttl, total, flow) = match check_ipv4(b) {
        Ok((h, _, total)) => (h[8], total, FlowKey::from_ipv4(&b[..total])),
        Err(r) => return drop(p, r),
    };
    ipv4_checked(p, l3 + total, ttl, flow, src_ip, egress_policy)
}

/// The IPv4 header of an Ethernet + IPv4 header array.
#[inline(always)]
fn ip_of(h: &[u8; ETH + IP]) -> &[u8; IP] {
    let (_, ip) = h.split_at(ETH);
    // A constant split of an array: the conversion cannot fail, and the
    // fallback is never taken.
    ip.try_into().unwrap_or(&[0; IP])
}

/// [`FlowKey::from_ipv4`] for a header without options and its payload `l4`
/// up to the total length.
#[inline(always)]
fn flow_fast(ip: &[u8; IP], l4: &[u8]) -> FlowKey {
    let mut k = FlowKey::from_header(ip);
    if ip[6] & 0x1f != 0 || ip[7] != 0 {
        return k; // a later fragment: no L4 header
    }
    match k.proto {
        6 | 17 | 132 => {
            if let Some(w) = l4.first_chunk::<4>() {
                k.sport = u16::from_be_bytes([w[0], w[1]]);
                k.dport = u16::from_be_bytes([w[2], w[3]]);
            }
        }
        1 => {
            if let Some(w) = l4.first_chunk::<8>() {
                if w[0] == 8 || w[0] == 0 {
                    let id = u16::from_be_bytes([w[4], w[5]]);
                    k.sport = id;
                    k.dport = id;
                }
            }
        }
        _ => {}
    }
    k
}

/// The rest of ipv4-input once the header at `meta.l3` is known to be valid:
/// `end` is where its total length ends the frame.
#[inline(always)]
fn ipv4_checked(
    p: &mut Packet,
    end: usize,
    ttl: u8,
    flow: FlowKey,
    src_ip: Option<u32>,
    egress_policy: bool,
) -> u32 {
    if src_ip.is_some_and(|ip| ip != flow.src) {
        return drop(p, R::SpoofedSourceIp);
    }
    p.meta.flow = flow;
    p.truncate(end);
    if ttl <= 1 {
        p.meta.aux = icmp_kind::TIME_EXCEEDED;
        p.meta.drop = R::TtlExpired;
        return goto(p, Next::IcmpError);
    }
    if egress_policy && p.meta.src_ep != Meta::NO_EP {
        goto(p, Next::PolicyEgress)
    } else {
        goto(p, Next::Lookup)
    }
}

/// An IPv4 header at the start of `b` that is whole, version 4 and whose
/// checksum verifies (outer headers in uplink-input, every routed packet in
/// ipv4-input): its fixed part, header length and total length, or why not.
#[inline(always)]
fn check_ipv4(b: &[u8]) -> Result<(&[u8; IP], usize, usize), R> {
    let Some(h) = b.first_chunk::<IP>() else {
        return Err(R::Ipv4Truncated);
    };
    let total = usize::from(be16(h, 2));
    // The common case: version 4, no options, total length within the frame.
    if h[0] == 0x45 && total >= IP && total <= b.len() {
        if !checksum::verify20(h) {
            return Err(R::Ipv4BadChecksum);
        }
        return Ok((h, IP, total));
    }
    check_ipv4_slow(b, h, total)
}

#[cold]
fn check_ipv4_slow<'a>(
    b: &'a [u8],
    h: &'a [u8; IP],
    total: usize,
) -> Result<(&'a [u8; IP], usize, usize), R> {
    let hl = usize::from(h[0] & 0x0f) * 4;
    if hl < IP {
        return Err(R::Ipv4BadVersion);
    }
    if b.len() < hl {
        return Err(R::Ipv4Truncated);
    }
    if total < hl {
        return Err(R::Ipv4BadVersion);
    }
    if b.len() < total {
        return Err(R::Ipv4Truncated);
    }
    if h[0] >> 4 != 4 {
        return Err(R::Ipv4BadVersion);
    }
    if checksum::sum(&b[..hl]) != 0xffff {
        return Err(R::Ipv4BadChecksum);
    }
    Ok((h, hl, total))
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
            // Set by the port that received it.
            flags: p.meta.flags & Meta::FLAG_L4_CSUM_OK,
            gso_size: p.meta.gso_size,
            gso_ip: p.meta.gso_ip,
            ..Meta::default()
        };
    }
    first.bit()
}
