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
//! # Several workers
//! Ports belong to workers (a pod's port to one, the uplink maybe to
//! another), so the two directions of a connection may be seen by different
//! workers. With one worker, [`NetPolicy::new`] keeps its own table and takes
//! no lock. With more, every worker's `NetPolicy` is made with
//! [`NetPolicy::with_shared`] over one [`SharedTable`]: the node's connections
//! split in shards, each behind its own lock, chosen by
//! [`conntrack::symmetric_hash`] so both directions meet in one shard. A
//! packet of an isolated endpoint holds one shard's lock for its lookup (and
//! the insert of a new flow); an ICMP error takes the quoted connection's
//! shard after releasing its own, so no worker ever holds two.
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
//! * Workers sharing a table must read one clock: entries' timeouts are in
//!   the `now` of whichever worker touched them last (the runtime's workers
//!   start their clocks microseconds apart, far below any timeout).
//! * A shard fills on its own: with [`conntrack::Config::capacity`] split
//!   evenly, a node refuses a new flow ([`DropReason::ConntrackFull`]) when
//!   its shard is full, which the hash makes unlikely before the whole table
//!   nears full.

use std::sync::Arc;

use super::conntrack::{self, Dir, Handle, Hit, SharedTable, Tag, Update};
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
    /// Packets let through / dropped, per direction.
    pub allowed_egress: u64,
    pub allowed_ingress: u64,
    pub denied_egress: u64,
    pub denied_ingress: u64,
}

/// NetworkPolicy for one worker. See the module documentation.
#[derive(Debug)]
pub struct NetPolicy {
    /// The worker's own connections (empty when `shared` is set).
    ct: conntrack::Table,
    /// The node's connections, when several workers enforce.
    shared: Option<Arc<SharedTable>>,
    /// Whether [`Policy::stats`] reports the shared table's counters (one
    /// worker does, so a sum over workers counts each entry once).
    reports_shared: bool,
    e: Enforcer,
}

/// Everything but the connection table: the table is passed in, the
/// worker's own or a locked shard.
#[derive(Debug)]
struct Enforcer {
    on_change: OnPolicyChange,
    counters: Counters,
    /// The snapshot `slots` was built for (held, so pointers stay unique).
    policy: Arc<PolicyTables>,
    endpoints: Arc<EndpointTable>,
    /// Policy of each local endpoint, by endpoint index.
    slots: Vec<EndpointPolicy>,
    snapshot: u32,
}

/// Where the entry of a flow lives: the worker's own table, or the shard of
/// the shared one (locked for the duration of `f`).
trait Conns {
    fn with<R>(&mut self, key: &FlowKey, f: impl FnOnce(&mut conntrack::Table) -> R) -> R;
}

impl Conns for conntrack::Table {
    #[inline(always)]
    fn with<R>(&mut self, _: &FlowKey, f: impl FnOnce(&mut conntrack::Table) -> R) -> R {
        f(self)
    }
}

impl Conns for &SharedTable {
    #[inline]
    fn with<R>(&mut self, key: &FlowKey, f: impl FnOnce(&mut conntrack::Table) -> R) -> R {
        f(&mut self.shard(key))
    }
}

impl Default for NetPolicy {
    fn default() -> Self {
        NetPolicy::new(Config::default())
    }
}

impl NetPolicy {
    /// A worker with its own connection table (one worker per node, or a
    /// runtime that steers both directions of a flow to one worker).
    pub fn new(cfg: Config) -> NetPolicy {
        NetPolicy {
            ct: conntrack::Table::new(cfg.conntrack),
            shared: None,
            reports_shared: false,
            e: Enforcer::new(cfg.on_policy_change),
        }
    }

    /// A worker tracking connections in the node's `shared` table (made once
    /// from `cfg.conntrack`, see [`SharedTable::new`]). The first `NetPolicy`
    /// made over a table reports its counters in [`Policy::stats`]; the
    /// others report zero for them.
    pub fn with_shared(cfg: Config, shared: Arc<SharedTable>) -> NetPolicy {
        let reports_shared = shared.elect_reporter();
        NetPolicy {
            // Unused: a minimal table, so no memory is reserved.
            ct: conntrack::Table::new(conntrack::Config {
                capacity: 1,
                ..cfg.conntrack
            }),
            shared: Some(shared),
            reports_shared,
            e: Enforcer::new(cfg.on_policy_change),
        }
    }

    /// The worker's own connection table (empty, unused, when the worker
    /// shares one: see [`NetPolicy::shared`]).
    pub fn conntrack(&self) -> &conntrack::Table {
        &self.ct
    }

    /// The worker's own connection table, for the runtime's sweeps and flushes.
    pub fn conntrack_mut(&mut self) -> &mut conntrack::Table {
        &mut self.ct
    }

    /// The node's shared connection table, if this worker uses one.
    pub fn shared(&self) -> Option<&Arc<SharedTable>> {
        self.shared.as_ref()
    }

    pub fn counters(&self) -> &Counters {
        &self.e.counters
    }

    /// Whether a packet of `key` going `dir` would be let through now by the
    /// connection table alone (operators, tests).
    pub fn tracked(&self, key: &FlowKey) -> Option<Dir> {
        let info = match &self.shared {
            None => self.ct.get(key)?,
            Some(s) => s.get(key)?,
        };
        Some(if info.orig == *key {
            Dir::Orig
        } else {
            Dir::Reply
        })
    }

    /// A packet of a flow that touches an isolated local endpoint.
    #[inline(always)]
    fn track(&mut self, pkt: &Packet, now: u64, trusted: bool) -> Verdict {
        match &self.shared {
            None => self.e.track(&mut self.ct, pkt, now, trusted),
            Some(s) => track_shared(&mut self.e, s, pkt, now, trusted),
        }
    }
}

/// The shared-table path, kept out of line so the single-worker path stays
/// as it was.
#[inline(never)]
fn track_shared(
    e: &mut Enforcer,
    mut s: &SharedTable,
    pkt: &Packet,
    now: u64,
    trusted: bool,
) -> Verdict {
    e.track(&mut s, pkt, now, trusted)
}

impl Enforcer {
    fn new(on_change: OnPolicyChange) -> Enforcer {
        Enforcer {
            on_change,
            counters: Counters::default(),
            policy: Arc::default(),
            endpoints: Arc::default(),
            slots: Vec::new(),
            snapshot: 0,
        }
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
    fn revalidate(&mut self, ct: &mut conntrack::Table, h: Handle, tag: Tag) -> bool {
        let Some((lo, hi)) = ct.addresses(h) else {
            return false;
        };
        if self.policy.ip_generation(lo) != tag.gen_lo
            || self.policy.ip_generation(hi) != tag.gen_hi
        {
            self.counters.stale += 1;
            return false;
        }
        if self.on_change == OnPolicyChange::Recheck {
            let Some(info) = ct.info(h) else {
                return false;
            };
            if self.classify(&info.orig).is_err() {
                self.counters.recheck_cut += 1;
                return false;
            }
        }
        ct.set_tag(
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
    #[inline(always)]
    fn track<C: Conns>(&mut self, ct: &mut C, pkt: &Packet, now: u64, trusted: bool) -> Verdict {
        let key = pkt.meta.flow;
        let flags = tcp_flags(pkt);
        let done = ct.with(&key, |t| {
            match t.hit(&key, flags, now, self.snapshot) {
                Hit::Tracked(_) => return Ok(Verdict::Allow),
                Hit::Miss if key.proto == 1 => {
                    // Maybe an ICMP error about a tracked connection,
                    // whose entry may live in another shard.
                    if let Some(inner) = icmp_error_quote(pkt) {
                        return Err(inner);
                    }
                }
                Hit::Miss => {}
                Hit::Reopen(h) => t.remove(h),
                Hit::Check(h, dir) => {
                    let tag = t.tag(h).unwrap_or_default();
                    if self.revalidate(t, h, tag) {
                        match t.update(h, dir, flags, now) {
                            Update::Tracked => return Ok(Verdict::Allow),
                            Update::Reopen => t.remove(h),
                        }
                    } else {
                        t.remove(h);
                    }
                }
            }
            Ok(self.new_flow(t, &key, flags, now, trusted))
        });
        match done {
            Ok(v) => v,
            Err(inner) => self.icmp_error(ct, &key, &inner, now, trusted),
        }
    }

    /// An ICMP error quoting `inner` that has no entry of its own: allowed if
    /// `inner` is tracked (Linux's RELATED: path MTU discovery must keep
    /// working), else a new flow like any other.
    #[cold]
    #[inline(never)]
    fn icmp_error<C: Conns>(
        &mut self,
        ct: &mut C,
        key: &FlowKey,
        inner: &FlowKey,
        now: u64,
        trusted: bool,
    ) -> Verdict {
        if ct.with(inner, |t| t.lookup(inner, now).is_some()) {
            return Verdict::Allow;
        }
        ct.with(key, |t| self.new_flow(t, key, 0, now, trusted))
    }

    #[inline(never)]
    fn new_flow(
        &mut self,
        ct: &mut conntrack::Table,
        key: &FlowKey,
        flags: u8,
        now: u64,
        trusted: bool,
    ) -> Verdict {
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
        match ct.insert(key, flags, now, tag) {
            Ok(_) => Verdict::Allow,
            Err(_) => Verdict::Deny(DropReason::ConntrackFull),
        }
    }
}

impl NetPolicy {
    #[inline(always)]
    fn egress_verdict(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict {
        self.e.sync(tables);
        if pkt.meta.src_ep == Meta::NO_EP || !self.e.slot(pkt.meta.src_ep).is_isolated() {
            return Verdict::Allow;
        }
        self.track(pkt, now, false)
    }

    #[inline(always)]
    fn ingress_verdict(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict {
        self.e.sync(tables);
        if pkt.meta.dst_ep == Meta::NO_EP || !self.e.slot(pkt.meta.dst_ep).is_isolated() {
            return Verdict::Allow;
        }
        self.track(pkt, now, pkt.meta.in_port == PortId::HOST)
    }
}

impl Policy for NetPolicy {
    #[inline]
    fn egress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict {
        let v = self.egress_verdict(tables, pkt, now);
        match v {
            Verdict::Allow => self.e.counters.allowed_egress += 1,
            Verdict::Deny(_) => self.e.counters.denied_egress += 1,
        }
        v
    }

    #[inline]
    fn ingress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict {
        let v = self.ingress_verdict(tables, pkt, now);
        match v {
            Verdict::Allow => self.e.counters.allowed_ingress += 1,
            Verdict::Deny(_) => self.e.counters.denied_ingress += 1,
        }
        v
    }

    /// Verdict counters are this worker's. Table counters are this worker's
    /// table's, or, over a shared table, the whole table's from the one
    /// worker elected by [`NetPolicy::with_shared`] and zero from the others,
    /// so the sum over workers counts every entry once.
    fn stats(&self) -> super::PolicyStats {
        let c = &self.e.counters;
        let ct = match &self.shared {
            None => *self.ct.counters(),
            Some(s) if self.reports_shared => s.counters(),
            Some(_) => conntrack::Counters::default(),
        };
        super::PolicyStats {
            allowed_egress: c.allowed_egress,
            allowed_ingress: c.allowed_ingress,
            denied_egress: c.denied_egress,
            denied_ingress: c.denied_ingress,
            new_flows: c.new_flows,
            conntrack_entries: ct.entries,
            conntrack_inserts: ct.inserts,
            conntrack_evictions: ct.evictions,
            conntrack_removed: ct.removed,
            conntrack_full: ct.full,
        }
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
        /// A second worker, over the same shared table as `pl`.
        other: Option<Pipeline<NetPolicy>>,
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
                other: None,
                pool: Pool::new(64, DEFAULT_BUF_SIZE),
                tx: TxQueues::default(),
            };
            me.set(p);
            me
        }

        /// Two workers over one shared table of `shards` shards; `pl` is
        /// made first, so it reports the table's counters.
        fn shared(p: PolicyTables, cfg: Config, shards: usize) -> H {
            let s = Arc::new(SharedTable::new(cfg.conntrack, shards));
            let mut me = H::new(p, cfg);
            me.pl = Pipeline::new(&me.h, NetPolicy::with_shared(cfg, s.clone()));
            me.other = Some(Pipeline::new(&me.h, NetPolicy::with_shared(cfg, s)));
            me
        }

        fn other(&self) -> &Pipeline<NetPolicy> {
            self.other.as_ref().expect("a second worker")
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
            self.send_on(0, port, frame, now)
        }

        /// [`H::send`] through worker 0 (`pl`) or 1 (`other`).
        fn send_on(&mut self, worker: usize, port: PortId, frame: &[u8], now: u64) -> bool {
            let mut b = Batch::new();
            let mut p = self.pool.alloc().unwrap();
            assert!(p.load(frame));
            b.push(p);
            let pl = match worker {
                0 => &mut self.pl,
                _ => self.other.as_mut().expect("a second worker"),
            };
            pl.process(port, &mut b, now, &mut self.pool, &mut self.tx);
            let sent = self.tx.len() == 1;
            self.tx.clear(&mut self.pool);
            sent
        }

        /// Drops on all workers.
        fn drops(&self, r: DropReason) -> u64 {
            self.pl.counters().drop_count(r)
                + self
                    .other
                    .as_ref()
                    .map_or(0, |o| o.counters().drop_count(r))
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
        // One worker; then two sharing a table, the error on the other one
        // (its entry and the quoted connection's sit in different shards).
        for shared in [false, true] {
            icmp_errors_pass(shared);
        }
    }

    fn icmp_errors_pass(shared: bool) {
        let p = snapshot(&[(POD_A1, Some(rules(&[])), None)], &[]);
        let mut h = match shared {
            false => H::new(p, Config::default()),
            true => H::shared(p, Config::default(), conntrack::DEFAULT_SHARDS),
        };
        let w = usize::from(shared);
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
        assert!(h.send_on(w, PortId::UPLINK, &error(&sent), 1));
        // One about a connection A1 never made does not.
        let other = from_a1(POD_B1, 40001, 53, None);
        assert!(!h.send_on(w, PortId::UPLINK, &error(&other), 2));
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 1);
    }

    #[test]
    fn workers_sharing_a_table_see_each_others_connections() {
        // A1 accepts nothing. Worker 0 serves A1's port, worker 1 the uplink.
        let p = snapshot(&[(POD_A1, Some(rules(&[])), None)], &[]);
        let mut h = H::shared(p, Config::default(), conntrack::DEFAULT_SHARDS);
        assert!(h.send_on(0, POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 0));
        assert!(h.send_on(1, PortId::UPLINK, &b1_to_a1(53, 40000, None), 1));
        // A TCP handshake split between the workers.
        assert!(h.send_on(0, POD_A1_PORT, &from_a1(POD_B1, 40001, 80, Some(SYN)), 2));
        assert!(h.send_on(1, PortId::UPLINK, &b1_to_a1(80, 40001, Some(SYN | ACK)), 3));
        assert!(h.send_on(0, POD_A1_PORT, &from_a1(POD_B1, 40001, 80, Some(ACK)), 4));
        assert!(h.send_on(1, PortId::UPLINK, &b1_to_a1(80, 40001, Some(ACK)), 5));
        let k = FlowKey {
            src: u32::from(POD_A1),
            dst: u32::from(POD_B1),
            sport: 40001,
            dport: 80,
            proto: 6,
        };
        let s = h.pl.policy.shared().unwrap().clone();
        assert_eq!(s.get(&k).unwrap().state, conntrack::State::TcpEstablished);
        assert_eq!(h.other().policy.tracked(&k.reversed()), Some(Dir::Reply));
        assert_eq!(h.pl.policy.tracked(&k), Some(Dir::Orig));
        assert!(h.pl.policy.conntrack().is_empty());
        // A new flow from B1 is still denied, whichever worker sees it.
        assert!(!h.send_on(1, PortId::UPLINK, &b1_to_a1(53, 40002, None), 6));
        assert!(!h.send_on(0, PortId::UPLINK, &b1_to_a1(53, 40003, None), 6));
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 2);
        // Verdicts are counted per worker; the table once, by worker 0.
        let (s0, s1) = (h.pl.policy.stats(), h.other().policy.stats());
        assert_eq!((s0.new_flows, s1.new_flows), (2, 0));
        assert_eq!((s0.allowed_ingress, s1.allowed_ingress), (0, 3));
        assert_eq!((s0.denied_ingress, s1.denied_ingress), (1, 1));
        assert_eq!((s0.conntrack_entries, s1.conntrack_entries), (2, 0));
        assert_eq!((s0.conntrack_inserts, s1.conntrack_inserts), (2, 0));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn shared_table_drops_reused_addresses_and_fills() {
        let deny = || Some(rules(&[]));
        let gens = |g| [(POD_A1, g), (POD_B1, 7)];
        let p = snapshot(&[(POD_A1, deny(), None)], &gens(1));
        let mut h = H::shared(p, Config::default(), conntrack::DEFAULT_SHARDS);
        assert!(h.send_on(0, POD_A1_PORT, &from_a1(POD_B1, 40000, 53, None), 0));
        assert!(h.send_on(1, PortId::UPLINK, &b1_to_a1(53, 40000, None), 1));
        // A new pod gets A1's address: the old flow is gone on either worker.
        h.set(snapshot(&[(POD_A1, deny(), None)], &gens(2)));
        assert!(!h.send_on(1, PortId::UPLINK, &b1_to_a1(53, 40000, None), 2));
        assert_eq!(h.other().policy.counters().stale, 1);
        assert_eq!(h.drops(DropReason::PolicyDeniedIngress), 1);
        assert!(h.pl.policy.shared().unwrap().is_empty());

        // One shard of two entries, filled from both workers.
        let cfg = Config {
            conntrack: conntrack::Config {
                capacity: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut h = H::shared(snapshot(&[(POD_A1, deny(), None)], &[]), cfg, 1);
        assert!(h.send_on(0, POD_A1_PORT, &from_a1(POD_B1, 1, 53, None), 0));
        assert!(h.send_on(1, POD_A1_PORT, &from_a1(POD_B1, 2, 53, None), 0));
        assert!(!h.send_on(1, POD_A1_PORT, &from_a1(POD_B1, 3, 53, None), 0));
        assert_eq!(h.drops(DropReason::ConntrackFull), 1);
        assert_eq!(h.pl.policy.stats().conntrack_full, 1);
        assert_eq!(h.other().policy.stats().conntrack_full, 0);
        // Established flows still pass; after the timeout room is made.
        assert!(h.send_on(0, PortId::UPLINK, &b1_to_a1(53, 2, None), 1));
        assert!(h.send_on(1, POD_A1_PORT, &from_a1(POD_B1, 3, 53, None), 200 * SEC));
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
