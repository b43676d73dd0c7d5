//! ipv4-lookup: longest-prefix match on the destination, resolved to the
//! output stage, port and tunnel, with the path-MTU check.

use super::encap::Output;
use super::{at, drop, goto, icmp_kind, Counters, Next};
use crate::buf::{Packet, PortId};
use crate::drop::DropReason as R;
use crate::table::{NextHop, Tables};

/// What a destination resolves to, for packets from one input port: every
/// table read a packet needs, done once per destination (route, endpoint or
/// tunnel entry), leaving only the per-packet MTU check.
#[derive(Debug, Clone, Copy)]
enum Resolved {
    Drop(R),
    Local {
        ep: u32,
        port: PortId,
    },
    Host,
    /// Out of the uplink through tunnel/adjacency `id` to stage `next`.
    Out {
        id: u32,
        next: Next,
        mtu: u16,
    },
}

/// What the route `packed` (an LPM value) for `dst` resolves to.
#[inline(always)]
fn resolve(t: &Tables, packed: u32, dst: u32, in_port: PortId) -> Resolved {
    let from_uplink = in_port == PortId::UPLINK;
    match NextHop::unpack(packed) {
        None => Resolved::Drop(R::NoRoute),
        Some(NextHop::Drop) => Resolved::Drop(R::RouteDrop),
        Some(NextHop::Local) => match t.endpoints.by_ip(dst) {
            None => Resolved::Drop(R::NoEndpoint),
            Some(ep) => Resolved::Local {
                ep,
                port: t.endpoints.get(ep).port,
            },
        },
        Some(NextHop::Host) => {
            if in_port == PortId::HOST || from_uplink {
                Resolved::Drop(R::Hairpin)
            } else if t.node.host_mac.is_none() {
                Resolved::Drop(R::HostPortDisabled)
            } else {
                Resolved::Host
            }
        }
        Some(nh @ (NextHop::Vxlan(id) | NextHop::Ipip(id) | NextHop::Native(id))) => {
            match t.tunnels.get(id) {
                _ if from_uplink => Resolved::Drop(R::Hairpin),
                None => Resolved::Drop(R::NoRoute),
                Some(tun) if !tun.is_resolved() => Resolved::Drop(R::NeighbourUnresolved),
                Some(tun) => Resolved::Out {
                    id: id.0,
                    next: match nh {
                        NextHop::Vxlan(_) => Next::VxlanEncap,
                        NextHop::Ipip(_) => Next::IpipEncap,
                        _ => Next::NativeOutput,
                    },
                    mtu: tun.mtu,
                },
            }
        }
    }
}

/// ipv4-lookup. Consecutive packets usually share a destination, so the last
/// resolution is remembered for the batch.
pub fn lookup(t: &Tables, _c: &mut Counters, pkts: &mut [Packet], ingress_policy: bool) -> u32 {
    let mut router = Router::new(ingress_policy);
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, Next::Lookup)) {
        pending |= router.route(t, p);
    }
    pending
}

/// ipv4-lookup for one packet at a time, remembering the last resolution:
/// the stage's loop, and the input stages that run it fused.
///
/// Two levels of reuse: the same destination skips the LPM walk; another
/// destination whose route has the same next hop (packed LPM value) reuses
/// its resolution, unless it is local (the endpoint depends on the address).
pub(super) struct Router {
    to_local: Next,
    dst: u32,
    /// The input port `last` was resolved for; [`NO_PORT`] before the first.
    port: PortId,
    packed: u32,
    last: Resolved,
}

/// No port: the router has resolved nothing yet (a packet from port 65535,
/// should one exist, is simply never served from the cache).
const NO_PORT: PortId = PortId(u16::MAX);

/// The packed value of [`NextHop::Local`], whose resolution depends on the
/// destination address.
const LOCAL: u32 = NextHop::Local.pack();

impl Router {
    #[inline(always)]
    pub(super) fn new(ingress_policy: bool) -> Router {
        Router {
            to_local: if ingress_policy {
                Next::PolicyIngress
            } else {
                Next::LocalDelivery
            },
            dst: 0,
            port: NO_PORT,
            packed: 0,
            last: Resolved::Drop(R::NoRoute),
        }
    }

    #[inline(always)]
    fn resolve(&mut self, t: &Tables, dst: u32, in_port: PortId) -> Resolved {
        if self.port == in_port && in_port != NO_PORT {
            if self.dst == dst {
                return self.last;
            }
            let packed = t.routes.lookup_packed(dst);
            if packed == self.packed && packed != LOCAL {
                self.dst = dst;
                return self.last;
            }
            return self.miss(t, packed, dst, in_port);
        }
        let packed = t.routes.lookup_packed(dst);
        self.miss(t, packed, dst, in_port)
    }

    #[inline(never)]
    fn miss(&mut self, t: &Tables, packed: u32, dst: u32, in_port: PortId) -> Resolved {
        let r = resolve(t, packed, dst, in_port);
        *self = Router {
            to_local: self.to_local,
            dst,
            port: in_port,
            packed,
            last: r,
        };
        r
    }

    /// Decides one packet waiting for ipv4-lookup; returns its next stage's bit.
    #[inline(always)]
    pub(super) fn route(&mut self, t: &Tables, p: &mut Packet) -> u32 {
        let r = self.resolve(t, p.meta.flow.dst, p.meta.in_port);
        self.apply(p, r)
    }

    /// [`Router::route`], then the output stage the packet goes to, at once
    /// (the fused paths); returns the packet's next stage bit.
    #[inline(always)]
    pub(super) fn route_out<'t>(
        &mut self,
        t: &'t Tables,
        c: &mut Counters,
        ident: &mut u16,
        out: &mut Output<'t>,
        p: &mut Packet,
    ) -> u32 {
        let r = self.resolve(t, p.meta.flow.dst, p.meta.in_port);
        match r {
            Resolved::Out { id, next, mtu } if fits(p, mtu) => {
                p.meta.aux = id;
                p.meta.out_port = PortId::UPLINK;
                match next {
                    Next::VxlanEncap => out.vxlan(t, c, ident, p),
                    Next::IpipEncap => out.ipip(t, c, ident, p),
                    _ => out.native(t, c, p),
                }
            }
            Resolved::Local { ep, port } if self.to_local == Next::LocalDelivery => {
                p.meta.dst_ep = ep;
                p.meta.out_port = port;
                out.local(t, c, p)
            }
            Resolved::Host => {
                p.meta.out_port = PortId::HOST;
                out.host(t, c, p)
            }
            r => self.apply(p, r),
        }
    }

    /// Sends a packet where its resolution says.
    #[inline(always)]
    fn apply(&self, p: &mut Packet, r: Resolved) -> u32 {
        match r {
            Resolved::Drop(reason) => drop(p, reason),
            Resolved::Local { ep, port } => {
                p.meta.dst_ep = ep;
                p.meta.out_port = port;
                goto(p, self.to_local)
            }
            Resolved::Host => {
                p.meta.out_port = PortId::HOST;
                goto(p, Next::HostOutput)
            }
            Resolved::Out { id, next, mtu } => {
                if !fits(p, mtu) {
                    if df(p) {
                        p.meta.aux = icmp_kind::FRAG_NEEDED | u32::from(mtu);
                        p.meta.drop = R::FragNeeded;
                        goto(p, Next::IcmpError)
                    } else {
                        drop(p, R::TooBig)
                    }
                } else {
                    p.meta.aux = id;
                    p.meta.out_port = PortId::UPLINK;
                    goto(p, next)
                }
            }
        }
    }
}

/// Whether the IPv4 packet fits the path MTU: for a superframe, whether each
/// of its full-sized segments does.
#[inline(always)]
fn fits(p: &Packet, mtu: u16) -> bool {
    if p.meta.is_superframe() {
        return segment_fits(p, mtu);
    }
    p.len().saturating_sub(usize::from(p.meta.l3)) <= usize::from(mtu)
}

#[inline(never)]
fn segment_fits(p: &Packet, mtu: u16) -> bool {
    let l3 = usize::from(p.meta.l3);
    let d = p.data();
    let Some(&vihl) = d.get(l3) else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let Some(&off) = d.get(l3 + ihl + 12) else {
        return false;
    };
    ihl + usize::from(off >> 4) * 4 + usize::from(p.meta.gso_size) <= usize::from(mtu)
}

#[inline]
fn df(p: &Packet) -> bool {
    let l3 = usize::from(p.meta.l3);
    p.data().get(l3 + 6).is_some_and(|f| f & 0x40 != 0)
}
