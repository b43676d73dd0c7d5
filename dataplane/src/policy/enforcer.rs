//! [`NetPolicy`]: Kubernetes NetworkPolicy enforcement for one worker.
//!
//! Per packet, for a local endpoint that no policy isolates: one slot read,
//! then allow. For an isolated one: a connection-table lookup; a hit is
//! allowed (established flows and replies never reach the classifier). A miss
//! is a new flow, decided once for the whole node: the source's egress rules
//! if the source is local, the destination's ingress rules if the destination
//! is local. An allowed new flow gets a connection entry, so its replies pass
//! whatever the reverse direction's policy says.
//!
//! Connections are tracked only when a local endpoint they touch is isolated
//! in some direction: that is when a reply needs the entry.
//!
//! # Policy changes
//! New connections always see the policy of the snapshot in force. Existing
//! connections are kept by default ([`OnPolicyChange::KeepEstablished`], as
//! Calico and Cilium do; Kubernetes leaves it to the implementation), or
//! checked again against the new snapshot on their next packet and cut if it
//! no longer allows them ([`OnPolicyChange::Recheck`]). Either way an entry
//! whose address has passed to another pod since it was created (its address
//! generation changed, see [`PolicyTables`]) is dropped on its next packet, so
//! a new pod never inherits an old pod's connections, with no call from the
//! control plane into the workers.
//!
//! Traffic from the node itself (the host port) to a local pod is always
//! allowed, as Kubernetes requires (kubelet probes), and tracked, so the pod's
//! answers pass its egress policy. ICMP errors (unreachable, time exceeded,
//! parameter problem) that quote a tracked connection pass too (Linux's
//! RELATED), so path MTU discovery works for isolated pods.
//!
//! # Limits
//! * Fragments after the first carry no ports: they are classified on their
//!   own with port 0, so rules that name ports drop them (the fast path does
//!   not reassemble).
//! * A connection must be seen by one worker in both directions: the
//!   runtime steers by [`conntrack::symmetric_hash`] or gives a pod's port
//!   and the uplink's flows of that pod to the same worker.

use std::sync::Arc;

use super::conntrack::{self, Dir, Handle, Hit, Tag, Update};
use super::{EndpointPolicy, Policy, PolicyTables, Verdict};
use crate::buf::{Meta, Packet, PortId};
use crate::drop::DropReason;
use crate::flow::FlowKey;
use crate::table::{EndpointTable, Tables};

/// What happens to tracked connections when a new policy snapshot arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnPolicyChange {
    /// Keep them (Calico, Cilium): only new connections see the new policy.
    #[default]
    KeepEstablished,
    /// Check each again on its next packet; cut it if no longer allowed.
    Recheck,
}

/// How a [`NetPolicy`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    pub conntrack: conntrack::Config,
    pub on_policy_change: OnPolicyChange,
}

/// Per-worker counters of the enforcer (the drops themselves are counted by
/// the pipeline under their [`DropReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Flows classified and allowed.
    pub new_flows: u64,
    /// Flows classified and denied.
    pub denied: u64,
    /// Entries dropped because an address changed hands.
    pub stale: u64,
    /// Entries cut by [`OnPolicyChange::Recheck`].
    pub recheck_cut: u64,
}

/// NetworkPolicy for one worker. See the module documentation.
#[derive(Debug)]
pub struct NetPolicy {
    ct: conntrack::Table,
    on_change: OnPolicyChange,
    counters: Counters,
    /// The snapshot `slots` was built for (held, so pointers stay unique).
    policy: Arc<PolicyTables>,
    endpoints: Arc<EndpointTable>,
    /// Policy of each local endpoint, by endpoint index.
    slots: Vec<EndpointPolicy>,
    snapshot: u32,
}

impl Default for NetPolicy {
    fn default() -> Self {
        NetPolicy::new(Config::default())
    }
}

impl NetPolicy {
    pub fn new(cfg: Config) -> NetPolicy {
        NetPolicy {
            ct: conntrack::Table::new(cfg.conntrack),
            on_change: cfg.on_policy_change,
            counters: Counters::default(),
            policy: Arc::default(),
            endpoints: Arc::default(),
            slots: Vec::new(),
            snapshot: 0,
        }
    }

    pub fn conntrack(&self) -> &conntrack::Table {
        &self.ct
    }

    /// The connection table, for the runtime's sweeps and flushes.
    pub fn conntrack_mut(&mut self) -> &mut conntrack::Table {
        &mut self.ct
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Rebuilds the per-endpoint cache when the snapshot changed: two pointer
    /// comparisons per packet otherwise.
    #[inline(always)]
    fn sync(&mut self, t: &Tables) {
        if !(Arc::ptr_eq(&self.policy, &t.policy) && Arc::ptr_eq(&self.endpoints, &t.endpoints)) {
            self.resync(t);
        }
    }

    #[cold]
    #[inline(never)]
    fn resync(&mut self, t: &Tables) {
        self.policy = t.policy.clone();
        self.endpoints = t.endpoints.clone();
        self.snapshot = self.policy.generation();
        self.slots.clear();
        self.slots.extend(
            self.endpoints
                .iter()
                .map(|e| self.policy.endpoint(u32::from(e.ip))),
        );
    }

    #[inline(always)]
    fn slot(&self, ep: u32) -> EndpointPolicy {
        match self.slots.get(ep as usize) {
            Some(p) => *p,
            // Not a local endpoint index: a caller bug; the unknown policy.
            None => self.policy.unknown(),
        }
    }

    /// The policy of a local endpoint by address; `None` if not local.
    #[inline]
    fn local(&self, ip: u32) -> Option<EndpointPolicy> {
        self.endpoints.by_ip(ip).map(|i| self.slot(i))
    }

    /// Decides a new flow for this node: the source's egress if local, the
    /// destination's ingress if local.
    fn classify(&self, k: &FlowKey) -> Result<(), DropReason> {
        let p = &*self.policy;
        if let Some(ep) = self.local(k.src) {
            if let Some(rs) = ep.egress {
                if !p
                    .rule_set(rs)
                    .is_some_and(|r| r.allows(k.dst, k.proto, k.dport))
                {
                    return Err(DropReason::PolicyDeniedEgress);
                }
            }
        }
        if let Some(ep) = self.local(k.dst) {
            if let Some(rs) = ep.ingress {
                if !p
                    .rule_set(rs)
                    .is_some_and(|r| r.allows(k.src, k.proto, k.dport))
                {
                    return Err(DropReason::PolicyDeniedIngress);
                }
            }
        }
        Ok(())
    }

    /// Whether a tracked entry still holds under the current snapshot.
    #[cold]
    fn revalidate(&mut self, h: Handle, tag: Tag) -> bool {
        let Some((lo, hi)) = self.ct.addresses(h) else {
            return false;
        };
        if self.policy.ip_generation(lo) != tag.gen_lo
            || self.policy.ip_generation(hi) != tag.gen_hi
        {
            self.counters.stale += 1;
            return false;
        }
        if self.on_change == OnPolicyChange::Recheck {
            let Some(info) = self.ct.info(h) else {
                return false;
            };
            if self.classify(&info.orig).is_err() {
                self.counters.recheck_cut += 1;
                return false;
            }
        }
        self.ct.set_tag(
            h,
            Tag {
                snapshot: self.snapshot,
                ..tag
            },
        );
        true
    }

    /// A packet of a flow that touches an isolated local endpoint. `trusted`:
    /// allowed whatever the policy (from the node), but tracked.
    #[inline]
    fn track(&mut self, pkt: &Packet, now: u64, trusted: bool) -> Verdict {
        let key = pkt.meta.flow;
        let flags = tcp_flags(pkt);
        match self.ct.hit(&key, flags, now, self.snapshot) {
            Hit::Tracked(_) => return Verdict::Allow,
            Hit::Miss if key.proto == 1 => {
                // An ICMP error about a tracked connection (Linux's
                // RELATED): path MTU discovery must keep working.
                if let Some(inner) = icmp_error_quote(pkt) {
                    if self.ct.lookup(&inner, now).is_some() {
                        return Verdict::Allow;
                    }
                }
            }
            Hit::Miss => {}
            Hit::Reopen(h) => self.ct.remove(h),
            Hit::Check(h, dir) => {
                let tag = self.ct.tag(h).unwrap_or_default();
                if self.revalidate(h, tag) {
                    match self.ct.update(h, dir, flags, now) {
                        Update::Tracked => return Verdict::Allow,
                        Update::Reopen => self.ct.remove(h),
                    }
                } else {
                    self.ct.remove(h);
                }
            }
        }
        self.new_flow(&key, flags, now, trusted)
    }

    #[inline(never)]
    fn new_flow(&mut self, key: &FlowKey, flags: u8, now: u64, trusted: bool) -> Verdict {
        if !trusted {
            if let Err(r) = self.classify(key) {
                self.counters.denied += 1;
                return Verdict::Deny(r);
            }
        }
        self.counters.new_flows += 1;
        let (lo, hi) = conntrack::ends(key);
        let tag = Tag {
            snapshot: self.snapshot,
            gen_lo: self.policy.ip_generation(lo),
            gen_hi: self.policy.ip_generation(hi),
        };
        match self.ct.insert(key, flags, now, tag) {
            Ok(_) => Verdict::Allow,
            Err(_) => Verdict::Deny(DropReason::ConntrackFull),
        }
    }

    /// Whether a packet of `key` going `dir` would be let through now by the
    /// connection table alone (operators, tests).
    pub fn tracked(&self, key: &FlowKey) -> Option<Dir> {
        let info = self.ct.get(key)?;
        Some(if info.orig == *key {
            Dir::Orig
        } else {
            Dir::Reply
        })
    }
}

impl Policy for NetPolicy {
    #[inline]
    fn egress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict {
        self.sync(tables);
        if pkt.meta.src_ep == Meta::NO_EP || !self.slot(pkt.meta.src_ep).is_isolated() {
            return Verdict::Allow;
        }
        self.track(pkt, now, false)
    }

    #[inline]
    fn ingress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict {
        self.sync(tables);
        if pkt.meta.dst_ep == Meta::NO_EP || !self.slot(pkt.meta.dst_ep).is_isolated() {
            return Verdict::Allow;
        }
        self.track(pkt, now, pkt.meta.in_port == PortId::HOST)
    }
}

/// The 5-tuple quoted by an ICMP destination-unreachable, time-exceeded or
/// parameter-problem message (the packet that caused it, as it was sent).
fn icmp_error_quote(pkt: &Packet) -> Option<FlowKey> {
    let d = pkt.data();
    let l3 = usize::from(pkt.meta.l3);
    let ihl = usize::from(d.get(l3)? & 0x0f) * 4;
    let icmp = l3 + ihl;
    if !matches!(d.get(icmp)?, 3 | 11 | 12) {
        return None;
    }
    let inner = icmp + 8;
    let inner_ihl = usize::from(d.get(inner)? & 0x0f) * 4;
    if inner_ihl < 20 {
        return None;
    }
    let quoted = d.get(inner..)?;
    let ports = quoted.get(inner_ihl..inner_ihl + 4);
    let word = |i: usize| {
        quoted
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut k = FlowKey {
        src: word(12)?,
        dst: word(16)?,
        sport: 0,
        dport: 0,
        proto: *quoted.get(9)?,
    };
    match (k.proto, ports) {
        (6 | 17 | 132, Some(p)) => {
            k.sport = u16::from_be_bytes([p[0], p[1]]);
            k.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        (1, Some(p)) if p[0] == 8 => {
            // Quoted echo request: the identifier sits after type, code, checksum.
            let id = quoted.get(inner_ihl + 4..inner_ihl + 6)?;
            k.sport = u16::from_be_bytes([id[0], id[1]]);
            k.dport = k.sport;
        }
        _ => {}
    }
    Some(k)
}

/// The TCP flags of a packet (0 when not TCP or not there: a later fragment
/// or a truncated header).
#[inline]
fn tcp_flags(pkt: &Packet) -> u8 {
    if pkt.meta.flow.proto != 6 {
        return 0;
    }
    let d = pkt.data();
    let l3 = usize::from(pkt.meta.l3);
    let Some(&vihl) = d.get(l3) else { return 0 };
    // A later fragment carries no TCP header.
    match d.get(l3 + 6..l3 + 8) {
        Some(f) if u16::from_be_bytes([f[0], f[1]]) & 0x1fff == 0 => {}
        _ => return 0,
    }
    d.get(l3 + usize::from(vihl & 0x0f) * 4 + 13)
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::buf::{Batch, Pool, DEFAULT_BUF_SIZE};
    use crate::pipeline::{Pipeline, TxQueues};
    use crate::policy::classifier::{PeerRule, PortRange, PortSet, Protocol, RuleSet};
    use crate::policy::conntrack::tcp_flags::{ACK, FIN, SYN};
    use crate::policy::{PolicyTablesBuilder, RuleSetId};
    use crate::table::{default_vtep_mac, Mode, TableHandle, GATEWAY_MAC};
    use crate::testkit::*;
    use crate::wire::ipv4;

    const SEC: u64 = 1_000_000_000;

    /// Rules `(cidr, ports)`.
    fn rules(r: &[(&str, PortSet)]) -> Arc<RuleSet> {
        let r: Vec<PeerRule> = r
            .iter()
            .map(|(c, p)| PeerRule {
                cidr: c.parse().unwrap(),
                except: vec![],
                ports: p.clone(),
            })
            .collect();
        Arc::new(RuleSet::new(&r))
    }

    fn udp(port: u16) -> PortSet {
        PortSet::of(Protocol::Udp, [PortRange::one(port)])
    }

    /// An endpoint's `(ip, ingress, egress)`.
    type Ep = (Ipv4Addr, Option<Arc<RuleSet>>, Option<Arc<RuleSet>>);

    /// A snapshot: endpoints and address generations.
    fn snapshot(eps: &[Ep], gens: &[(Ipv4Addr, u32)]) -> PolicyTables {
        let mut b = PolicyTablesBuilder::new();
        for (ip, i, e) in eps {
            let mut id = |r: &Option<Arc<RuleSet>>| -> Option<RuleSetId> {
                r.clone().map(|r| b.add_rule_set(r))
            };
            let p = EndpointPolicy {
                ingress: id(i),
                egress: id(e),
            };
            b.endpoint(*ip, p).unwrap();
        }
        for (ip, g) in gens {
            b.ip_generation(*ip, *g);
        }
        b.build()
    }

    struct H {
        h: TableHandle,
        pl: Pipeline<NetPolicy>,
        pool: Pool,
        tx: TxQueues,
    }

    impl H {
        fn new(p: PolicyTables, cfg: Config) -> H {
            let h = node_a(Mode::Vxlan, 0, 0);
            let pl = Pipeline::new(&h, NetPolicy::new(cfg));
            let mut me = H {
                h,
                pl,
                pool: Pool::new(64, DEFAULT_BUF_SIZE),
                tx: TxQueues::default(),
            };
            me.set(p);
            me
        }

        fn set(&mut self, p: PolicyTables) {
            let p = Arc::new(p);
            self.h.update(|t| Tables {
                policy: p.clone(),
                ..t.clone()
            });
        }

        /// Whether one frame received on `port` at `now` was forwarded.
        fn send(&mut self, port: PortId, frame: &[u8], now: u64) -> bool {
            let mut b = Batch::new();
            let mut p = self.pool.alloc().unwrap();
            assert!(p.load(frame));
            b.push(p);
            self.pl
                .process(port, &mut b, now, &mut self.pool, &mut self.tx);
            let sent = self.tx.len() == 1;
            self.tx.clear(&mut self.pool);
            sent
        }

        fn drops(&self, r: DropReason) -> u64 {
            self.pl.counters().drop_count(r)
        }
    }

    fn tcpify(mut f: Vec<u8>, l3: usize, flags: u8) -> Vec<u8> {
        f[l3 + 9] = 6;
        f[l3 + 20 + 13] = flags;
        ipv4::Packet::new_unchecked(&mut f[l3..]).fill_checksum();
        f
    }

    /// Pod A1 -> `dst`, UDP (or TCP with `flags`).
    fn from_a1(dst: Ipv4Addr, sport: u16, dport: u16, tcp: Option<u8>) -> Vec<u8> {
        let f = udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, dst, sport, dport, 64);
        match tcp {
            Some(flags) => tcpify(f, 14, flags),
            None => f,
        }
    }

    /// Pod B1 (node B) -> pod A1 through VXLAN.
    fn b1_to_a1(sport: u16, dport: u16, tcp: Option<u8>) -> Vec<u8> {
        let inner = udp_frame(
            NODE_B_VTEP,
            default_vtep_mac(NODE_A),
            POD_B1,
            POD_A1,
            sport,
            dport,
            64,
        );
        let inner = match tcp {
            Some(flags) => tcpify(inner, 14, flags),
            None => inner,
        };
        vxlan_from_b(&inner, 4096, NODE_B)
    }

    #[test]
    fn reply_passes_when_the_reverse_is_denied() {
        // A1 receives nothing (ingress isolated, no rule); its egress is open.
        let p = snapshot(&[(POD_A1, Some(rules(&[])), None)], &[]);
        let mut h = H::new(p, Config::default());
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 0));
        assert!(h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 1));
        // A new flow from B1 is denied and counted as an ingress denial.
        assert!(!h.send(PortId::UPLINK, &b1_to_a1(53, 40001, None), 2));
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 1);
        assert_eq!(h.pl.policy.counters().new_flows, 1);
        assert_eq!(h.pl.policy.conntrack().len(), 1);
    }

    #[test]
    fn egress_denial_is_counted() {
        let egress = rules(&[("198.19.2.0/24", udp(5201))]);
        let p = snapshot(&[(POD_A1, None, Some(egress))], &[]);
        let mut h = H::new(p, Config::default());
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 5201, None), 0));
        assert!(!h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 5202, None), 0));
        assert!(!h.send(POD_A1_PORT, &from_a1(POD_A2, 40000, 5201, None), 0));
        assert_eq!(h.drops(DropReason::PolicyDeniedEgress), 2);
        // A2 is not isolated: it sends to anyone, and A1's replies pass.
        let f = udp_frame(POD_A2_MAC, GATEWAY_MAC, POD_A2, POD_A1, 7, 40000, 64);
        assert!(h.send(POD_A2_PORT, &f, 0));
        assert!(h.send(POD_A1_PORT, &from_a1(POD_A2, 40000, 7, None), 0));
    }

    #[test]
    fn same_node_flow_checks_both_ends() {
        // A1 may send anywhere; A2 accepts only TCP 80 from A1.
        let p = snapshot(
            &[
                (POD_A1, None, Some(rules(&[("0.0.0.0/0", PortSet::all())]))),
                (
                    POD_A2,
                    Some(rules(&[(
                        "198.19.1.10/32",
                        PortSet::of(Protocol::Tcp, [PortRange::one(80)]),
                    )])),
                    None,
                ),
            ],
            &[],
        );
        let mut h = H::new(p, Config::default());
        assert!(h.send(POD_A1_PORT, &from_a1(POD_A2, 40000, 80, Some(SYN)), 0));
        assert!(!h.send(POD_A1_PORT, &from_a1(POD_A2, 40000, 81, Some(SYN)), 0));
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 1);
        let syn_ack = tcpify(
            udp_frame(POD_A2_MAC, GATEWAY_MAC, POD_A2, POD_A1, 80, 40000, 64),
            14,
            SYN | ACK,
        );
        assert!(h.send(POD_A2_PORT, &syn_ack, 1));
        let k = FlowKey {
            src: u32::from(POD_A1),
            dst: u32::from(POD_A2),
            sport: 40000,
            dport: 80,
            proto: 6,
        };
        assert_eq!(
            h.pl.policy.conntrack().get(&k).unwrap().state,
            conntrack::State::TcpSynRecv
        );
    }

    #[test]
    fn timeouts_follow_the_injected_clock() {
        let p = snapshot(&[(POD_A1, Some(rules(&[])), None)], &[]);
        let mut h = H::new(p, Config::default());
        // UDP: 30 s to answer, then 120 s idle.
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 0));
        assert!(h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 29 * SEC));
        assert!(h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 148 * SEC));
        assert!(!h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 269 * SEC));
        // TCP: an unanswered SYN lives 120 s.
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40001, 80, Some(SYN)), 0));
        assert!(!h.send(
            PortId::UPLINK,
            &b1_to_a1(80, 40001, Some(SYN | ACK)),
            121 * SEC
        ));
        // Established and closed with FINs: time-wait lasts 120 s.
        let t0 = 1000 * SEC;
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40002, 80, Some(SYN)), t0));
        assert!(h.send(
            PortId::UPLINK,
            &b1_to_a1(80, 40002, Some(SYN | ACK)),
            t0 + 1
        ));
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40002, 80, Some(ACK)), t0 + 2));
        assert!(h.send(
            PortId::UPLINK,
            &b1_to_a1(80, 40002, Some(ACK)),
            t0 + 7000 * SEC
        ));
        assert!(h.send(
            POD_A1_PORT,
            &from_a1(POD_B1, 40002, 80, Some(FIN | ACK)),
            t0 + 7001 * SEC
        ));
        assert!(h.send(
            PortId::UPLINK,
            &b1_to_a1(80, 40002, Some(FIN | ACK)),
            t0 + 7002 * SEC
        ));
        assert!(h.send(
            POD_A1_PORT,
            &from_a1(POD_B1, 40002, 80, Some(ACK)),
            t0 + 7003 * SEC
        ));
        assert!(h.send(
            PortId::UPLINK,
            &b1_to_a1(80, 40002, Some(ACK)),
            t0 + 7122 * SEC
        ));
        assert!(!h.send(
            PortId::UPLINK,
            &b1_to_a1(80, 40002, Some(ACK)),
            t0 + 7243 * SEC
        ));
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 3);
    }

    #[test]
    fn full_table_refuses_new_flows() {
        let p = snapshot(&[(POD_A1, Some(rules(&[])), None)], &[]);
        let cfg = Config {
            conntrack: conntrack::Config {
                capacity: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut h = H::new(p, cfg);
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 1, 53, None), 0));
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 2, 53, None), 0));
        assert!(!h.send(POD_A1_PORT, &from_a1(POD_B1, 3, 53, None), 0));
        assert_eq!(h.drops(DropReason::ConntrackFull), 1);
        assert_eq!(h.pl.policy.conntrack().counters().full, 1);
        // Established flows still pass; after the timeout room is made.
        assert!(h.send(PortId::UPLINK, &b1_to_a1(53, 1, None), 1));
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 3, 53, None), 200 * SEC));
    }

    #[test]
    fn reused_address_does_not_inherit_connections() {
        // Old pod at A1 (generation 1) talks to B1; A1 accepts no new flows.
        let deny = || Some(rules(&[]));
        let gens = |g| [(POD_A1, g), (POD_B1, 7)];
        let mut h = H::new(
            snapshot(&[(POD_A1, deny(), None)], &gens(1)),
            Config::default(),
        );
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 0));
        assert!(h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 1));
        // An unrelated snapshot change keeps the connection.
        h.set(snapshot(&[(POD_A1, deny(), None)], &gens(1)));
        assert!(h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 2));
        // A new pod gets the address (generation 2): the old flow is gone.
        h.set(snapshot(&[(POD_A1, deny(), None)], &gens(2)));
        assert!(!h.send(PortId::UPLINK, &b1_to_a1(53, 40000, None), 3));
        assert_eq!(h.pl.policy.counters().stale, 1);
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 1);
        assert!(h.pl.policy.conntrack().is_empty());
        // flush_ip is there for callers without generations.
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40001, 53, None), 4));
        assert_eq!(h.pl.policy.conntrack_mut().flush_ip(POD_A1), 1);
    }

    #[test]
    fn policy_change_keeps_or_rechecks_connections() {
        for mode in [OnPolicyChange::KeepEstablished, OnPolicyChange::Recheck] {
            let allow = rules(&[("198.19.2.0/24", udp(53))]);
            let cfg = Config {
                on_policy_change: mode,
                ..Default::default()
            };
            let mut h = H::new(snapshot(&[(POD_A1, None, Some(allow))], &[]), cfg);
            assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 0));
            // The policy now denies A1 everything.
            h.set(snapshot(&[(POD_A1, None, Some(rules(&[])))], &[]));
            assert!(!h.send(POD_A1_PORT, &from_a1(POD_B1, 40001, 53, None), 1));
            let kept = h.send(POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 2);
            assert_eq!(kept, mode == OnPolicyChange::KeepEstablished, "{mode:?}");
            assert_eq!(
                h.pl.policy.counters().recheck_cut,
                u64::from(mode == OnPolicyChange::Recheck)
            );
        }
    }

    #[test]
    fn node_traffic_reaches_isolated_pods_and_is_answered() {
        let p = snapshot(&[(POD_A1, Some(rules(&[])), Some(rules(&[])))], &[]);
        let mut h = H::new(p, Config::default());
        let probe = tcpify(
            udp_frame(HOST_MAC, GATEWAY_MAC, NODE_A, POD_A1, 50000, 8080, 64),
            14,
            SYN,
        );
        assert!(h.send(PortId::HOST, &probe, 0));
        assert!(h.send(
            POD_A1_PORT,
            &from_a1(NODE_A, 8080, 50000, Some(SYN | ACK)),
            1
        ));
        // But the pod itself may not open anything.
        assert!(!h.send(POD_A1_PORT, &from_a1(NODE_A, 8081, 50000, Some(SYN)), 2));
        assert_eq!(h.drops(DropReason::PolicyDeniedEgress), 1);
    }

    #[test]
    fn icmp_errors_about_tracked_connections_pass() {
        let p = snapshot(&[(POD_A1, Some(rules(&[])), None)], &[]);
        let mut h = H::new(p, Config::default());
        let sent = from_a1(POD_B1, 40000, 53, None);
        assert!(h.send(POD_A1_PORT, &sent, 0));
        // A router on the way (here: node B) answers "fragmentation needed"
        // quoting A1's datagram: it reaches A1.
        let error = |quote: &[u8]| {
            let mut f = udp_frame(
                NODE_B_VTEP,
                default_vtep_mac(NODE_A),
                NODE_B,
                POD_A1,
                0,
                0,
                14 + 20 + 8 + 28,
            );
            f[23] = 1;
            f[34..42].copy_from_slice(&[3, 4, 0, 0, 0, 0, 5, 0x78]);
            f[42..70].copy_from_slice(&quote[14..42]);
            ipv4::Packet::new_unchecked(&mut f[14..]).fill_checksum();
            vxlan_from_b(&f, 4096, NODE_B)
        };
        assert!(h.send(PortId::UPLINK, &error(&sent), 1));
        // One about a connection A1 never made does not.
        let other = from_a1(POD_B1, 40001, 53, None);
        assert!(!h.send(PortId::UPLINK, &error(&other), 2));
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 1);
    }

    #[test]
    fn unknown_endpoints_and_bad_headers() {
        // No snapshot entry: open; a truncated TCP header reads as no flags.
        let mut h = H::new(PolicyTables::default(), Config::default());
        assert!(h.send(POD_A1_PORT, &from_a1(POD_B1, 1, 2, Some(SYN)), 0));
        let mut pkt = Packet::with_capacity(DEFAULT_BUF_SIZE);
        assert!(pkt.load(&[0x45, 0, 0, 20]));
        pkt.meta.flow.proto = 6;
        assert_eq!(tcp_flags(&pkt), 0);
        pkt.meta.l3 = 200;
        assert_eq!(tcp_flags(&pkt), 0);
    }
}
