//! ipv4-lookup: longest-prefix match on the destination, resolved to the
//! output stage, port and tunnel, with the path-MTU check.

use super::{at, drop, goto, icmp_kind, Counters, Next};
use crate::buf::{Packet, PortId};
use crate::drop::DropReason as R;
use crate::table::{NextHop, Tables};

/// ipv4-lookup. Consecutive packets usually share a destination, so the last
/// lookup is remembered for the batch.
pub fn lookup(t: &Tables, _c: &mut Counters, pkts: &mut [Packet], ingress_policy: bool) -> u32 {
    let to_local = if ingress_policy {
        Next::PolicyIngress
    } else {
        Next::LocalDelivery
    };
    let mut pending = 0;
    let mut last: Option<(u32, Option<NextHop>)> = None;
    for p in pkts.iter_mut().filter(|p| at(p, Next::Lookup)) {
        let dst = p.meta.flow.dst;
        let nh = match last {
            Some((k, nh)) if k == dst => nh,
            _ => {
                let nh = t.routes.lookup(dst);
                last = Some((dst, nh));
                nh
            }
        };
        let from_uplink = p.meta.in_port == PortId::UPLINK;
        let ip_len = (p.len() - usize::from(p.meta.l3)) as u32;
        pending |= match nh {
            None => drop(p, R::NoRoute),
            Some(NextHop::Drop) => drop(p, R::RouteDrop),
            Some(NextHop::Local) => match t.endpoints.by_ip(dst) {
                None => drop(p, R::NoEndpoint),
                Some(ep) => {
                    p.meta.dst_ep = ep;
                    p.meta.out_port = t.endpoints.get(ep).port;
                    goto(p, to_local)
                }
            },
            Some(NextHop::Host) => {
                if p.meta.in_port == PortId::HOST || from_uplink {
                    drop(p, R::Hairpin)
                } else if t.node.host_mac.is_none() {
                    drop(p, R::HostPortDisabled)
                } else {
                    p.meta.out_port = PortId::HOST;
                    goto(p, Next::HostOutput)
                }
            }
            Some(nh @ (NextHop::Vxlan(id) | NextHop::Ipip(id) | NextHop::Native(id))) => {
                match t.tunnels.get(id) {
                    _ if from_uplink => drop(p, R::Hairpin),
                    None => drop(p, R::NoRoute),
                    Some(tun) if !tun.is_resolved() => drop(p, R::NeighbourUnresolved),
                    Some(tun) if ip_len > u32::from(tun.mtu) => {
                        if df(p) {
                            p.meta.aux = icmp_kind::FRAG_NEEDED | u32::from(tun.mtu);
                            p.meta.drop = R::FragNeeded;
                            goto(p, Next::IcmpError)
                        } else {
                            drop(p, R::TooBig)
                        }
                    }
                    Some(_) => {
                        p.meta.aux = id.0;
                        p.meta.out_port = PortId::UPLINK;
                        goto(
                            p,
                            match nh {
                                NextHop::Vxlan(_) => Next::VxlanEncap,
                                NextHop::Ipip(_) => Next::IpipEncap,
                                _ => Next::NativeOutput,
                            },
                        )
                    }
                }
            }
        };
    }
    pending
}

#[inline]
fn df(p: &Packet) -> bool {
    let l3 = usize::from(p.meta.l3);
    p.data()[l3 + 6] & 0x40 != 0
}
