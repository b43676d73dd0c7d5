//! The policy hook: where NetworkPolicy plugs into the pipeline.
//!
//! The pipeline is generic over [`Policy`], so the hook costs a direct, inlined
//! call per packet (nothing at all for [`AllowAll`]), never a virtual call.
//! Egress is asked for packets leaving a local pod, ingress for packets about to
//! reach one; a packet between two pods on this node is asked both.
//!
//! NetworkPolicy itself is three parts:
//! * [`PolicyTables`]: the immutable snapshot the control plane's compiler
//!   builds (per local endpoint and direction: isolated or not, and a shared
//!   [`classifier::RuleSet`]), published inside [`Tables`] with everything else;
//! * [`conntrack::Table`]: one worker's connection table, so established flows
//!   and replies never reach the classifier ([`conntrack::SharedTable`] when
//!   several workers must see each other's connections);
//! * [`enforcer::NetPolicy`]: the [`Policy`] that joins them.

pub mod classifier;
pub mod conntrack;
pub mod enforcer;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;

use crate::buf::Packet;
use crate::drop::DropReason;
use crate::table::Tables;

pub use classifier::{Action, PeerRule, PortRange, PortSet, Protocol, RuleSet, TieredRule};
pub use conntrack::SharedTable as SharedConntrack;
pub use conntrack::Table as ConntrackTable;
pub use enforcer::NetPolicy;

/// A policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Drop, counted under the given reason (e.g. denied, or conntrack full).
    Deny(DropReason),
}

/// NetworkPolicy enforcement, per worker (it may keep per-worker state such as
/// a connection table). `now` is monotonic nanoseconds from the caller.
pub trait Policy {
    /// False for a policy that allows everything: the pipeline then skips the
    /// policy stages altogether (no pass over the batch at all).
    const ENFORCES: bool = true;
    /// A packet leaving the local endpoint `pkt.meta.src_ep`; `pkt.meta.flow` is set.
    fn egress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict;
    /// A packet about to reach the local endpoint `pkt.meta.dst_ep`.
    fn ingress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict;
    /// Counters for the metrics endpoint (read when the worker publishes).
    fn stats(&self) -> PolicyStats {
        PolicyStats::default()
    }
}

/// A worker's policy counters, as the metrics endpoint shows them (summed
/// over workers on scrape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyStats {
    /// Packets the policy let through / dropped, per direction.
    pub allowed_egress: u64,
    pub allowed_ingress: u64,
    pub denied_egress: u64,
    pub denied_ingress: u64,
    /// New flows classified and allowed.
    pub new_flows: u64,
    /// Connection-table entries live now, inserted, evicted (idle timeout),
    /// removed (flushed, stale, reopened) and new flows refused when full.
    pub conntrack_entries: u64,
    pub conntrack_inserts: u64,
    pub conntrack_evictions: u64,
    pub conntrack_removed: u64,
    pub conntrack_full: u64,
}

impl PolicyStats {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &PolicyStats) {
        self.allowed_egress += o.allowed_egress;
        self.allowed_ingress += o.allowed_ingress;
        self.denied_egress += o.denied_egress;
        self.denied_ingress += o.denied_ingress;
        self.new_flows += o.new_flows;
        self.conntrack_entries += o.conntrack_entries;
        self.conntrack_inserts += o.conntrack_inserts;
        self.conntrack_evictions += o.conntrack_evictions;
        self.conntrack_removed += o.conntrack_removed;
        self.conntrack_full += o.conntrack_full;
    }

    /// Every counter with its name (`sluicectl stats`).
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("allowed_egress", self.allowed_egress),
            ("allowed_ingress", self.allowed_ingress),
            ("denied_egress", self.denied_egress),
            ("denied_ingress", self.denied_ingress),
            ("new_flows", self.new_flows),
            ("conntrack_entries", self.conntrack_entries),
            ("conntrack_inserts", self.conntrack_inserts),
            ("conntrack_evictions", self.conntrack_evictions),
            ("conntrack_removed", self.conntrack_removed),
            ("conntrack_full", self.conntrack_full),
        ]
    }
}

/// No isolation: every flow is allowed (pods selected by no policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    const ENFORCES: bool = false;

    #[inline(always)]
    fn egress(&mut self, _: &Tables, _: &Packet, _: u64) -> Verdict {
        Verdict::Allow
    }

    #[inline(always)]
    fn ingress(&mut self, _: &Tables, _: &Packet, _: u64) -> Verdict {
        Verdict::Allow
    }
}

/// Index of a rule set within one [`PolicyTables`].
pub type RuleSetId = u32;

/// What one local endpoint's policy is: per direction, not isolated (`None`:
/// selected by no policy of that type, everything allowed) or isolated with
/// the rule set that says what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointPolicy {
    pub ingress: Option<RuleSetId>,
    pub egress: Option<RuleSetId>,
}

impl EndpointPolicy {
    /// Isolated in both directions with nothing allowed is spelt with an
    /// empty rule set; this is the opposite, the default.
    pub const OPEN: EndpointPolicy = EndpointPolicy {
        ingress: None,
        egress: None,
    };

    pub fn is_isolated(&self) -> bool {
        self.ingress.is_some() || self.egress.is_some()
    }
}

/// Snapshot numbers: unique in the process, so a connection entry can tell
/// whether it was checked against the snapshot a worker holds now.
static NEXT_GENERATION: AtomicU32 = AtomicU32::new(1);

/// NetworkPolicy as the fast path reads it: an immutable snapshot built by
/// the compiler ([`PolicyTablesBuilder`]) and swapped in with the rest of
/// [`Tables`].
///
/// Endpoints are keyed by IPv4, not by endpoint index, because indices change
/// between endpoint-table snapshots. Every known pod address (local or remote)
/// also carries an *address generation*, bumped by the compiler whenever the
/// address passes to another pod: a connection entry remembers the
/// generations of its two addresses, so a new pod with a reused address never
/// matches the old pod's connections, without any call into the workers.
#[derive(Debug, Clone)]
pub struct PolicyTables {
    endpoints: HashMap<u32, EndpointPolicy>,
    rule_sets: Vec<Arc<RuleSet>>,
    ip_generations: HashMap<u32, u32>,
    unknown: EndpointPolicy,
    generation: u32,
}

impl Default for PolicyTables {
    /// No endpoint isolated.
    fn default() -> PolicyTables {
        PolicyTables {
            endpoints: HashMap::new(),
            rule_sets: Vec::new(),
            ip_generations: HashMap::new(),
            unknown: EndpointPolicy::OPEN,
            generation: 0,
        }
    }
}

impl PolicyTables {
    /// The policy of the local endpoint holding `ip`; [`PolicyTables::unknown`]
    /// for a local endpoint the compiler did not know.
    #[inline]
    pub fn endpoint(&self, ip: u32) -> EndpointPolicy {
        self.endpoints.get(&ip).copied().unwrap_or(self.unknown)
    }

    /// Whether the compiler gave `ip` a policy.
    pub fn knows(&self, ip: Ipv4Addr) -> bool {
        self.endpoints.contains_key(&u32::from(ip))
    }

    /// The policy of local endpoints the compiler did not know (not isolated
    /// unless the builder said otherwise).
    pub fn unknown(&self) -> EndpointPolicy {
        self.unknown
    }

    #[inline]
    pub fn rule_set(&self, id: RuleSetId) -> Option<&RuleSet> {
        self.rule_sets.get(id as usize).map(|r| &**r)
    }

    /// The generation of a pod address (0: not a known pod address).
    #[inline]
    pub fn ip_generation(&self, ip: u32) -> u32 {
        self.ip_generations.get(&ip).copied().unwrap_or(0)
    }

    /// Unique per built snapshot (0 for the default).
    #[inline]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether `peer` may send a packet of protocol `proto` to `port` of the
    /// local endpoint `ip` (ingress), ignoring connection state.
    pub fn ingress_allows(&self, ip: u32, peer: u32, proto: u8, port: u16) -> bool {
        self.allows(self.endpoint(ip).ingress, peer, proto, port)
    }

    /// Whether the local endpoint `ip` may send a packet of protocol `proto`
    /// to `port` of `peer` (egress), ignoring connection state.
    pub fn egress_allows(&self, ip: u32, peer: u32, proto: u8, port: u16) -> bool {
        self.allows(self.endpoint(ip).egress, peer, proto, port)
    }

    #[inline]
    fn allows(&self, rs: Option<RuleSetId>, peer: u32, proto: u8, port: u16) -> bool {
        match rs {
            None => true,
            // A dangling id (a builder bug) denies: fail closed.
            Some(id) => self
                .rule_set(id)
                .is_some_and(|r| r.allows(peer, proto, port)),
        }
    }

    /// Endpoints with a policy.
    pub fn endpoints(&self) -> impl Iterator<Item = (Ipv4Addr, EndpointPolicy)> + '_ {
        self.endpoints
            .iter()
            .map(|(ip, p)| (Ipv4Addr::from(*ip), *p))
    }

    /// Distinct rule sets (shared between endpoints).
    pub fn rule_sets(&self) -> &[Arc<RuleSet>] {
        &self.rule_sets
    }

    /// Bytes held by the rule sets and maps.
    pub fn memory(&self) -> usize {
        self.rule_sets.iter().map(|r| r.memory()).sum::<usize>()
            + self.endpoints.allocation_size()
            + self.ip_generations.allocation_size()
            + std::mem::size_of::<PolicyTables>()
    }
}

/// Builds a [`PolicyTables`]; rule sets are added once and shared by id.
#[derive(Debug, Default)]
pub struct PolicyTablesBuilder {
    t: PolicyTables,
}

/// A builder input that refers to nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyTablesError {
    #[error("endpoint {ip} refers to rule set {id}, but only {count} were added")]
    NoSuchRuleSet {
        ip: Ipv4Addr,
        id: RuleSetId,
        count: usize,
    },
}

impl PolicyTablesBuilder {
    pub fn new() -> PolicyTablesBuilder {
        PolicyTablesBuilder::default()
    }

    /// Adds a rule set and returns its id.
    pub fn add_rule_set(&mut self, rs: Arc<RuleSet>) -> RuleSetId {
        self.t.rule_sets.push(rs);
        self.t.rule_sets.len() as RuleSetId - 1
    }

    /// Sets the policy of the local endpoint holding `ip`.
    pub fn endpoint(
        &mut self,
        ip: Ipv4Addr,
        policy: EndpointPolicy,
    ) -> Result<&mut Self, PolicyTablesError> {
        for id in [policy.ingress, policy.egress].into_iter().flatten() {
            if id as usize >= self.t.rule_sets.len() {
                return Err(PolicyTablesError::NoSuchRuleSet {
                    ip,
                    id,
                    count: self.t.rule_sets.len(),
                });
            }
        }
        self.t.endpoints.insert(u32::from(ip), policy);
        Ok(self)
    }

    /// Sets the generation of a pod address (see [`PolicyTables`]); 0 means
    /// unknown and is not stored.
    pub fn ip_generation(&mut self, ip: Ipv4Addr, generation: u32) -> &mut Self {
        if generation != 0 {
            self.t.ip_generations.insert(u32::from(ip), generation);
        }
        self
    }

    /// The policy of local endpoints the compiler does not know yet
    /// (open by default; a daemon may prefer isolating them until known).
    pub fn unknown(&mut self, policy: EndpointPolicy) -> Result<&mut Self, PolicyTablesError> {
        for id in [policy.ingress, policy.egress].into_iter().flatten() {
            if id as usize >= self.t.rule_sets.len() {
                return Err(PolicyTablesError::NoSuchRuleSet {
                    ip: Ipv4Addr::UNSPECIFIED,
                    id,
                    count: self.t.rule_sets.len(),
                });
            }
        }
        self.t.unknown = policy;
        Ok(self)
    }

    pub fn build(mut self) -> PolicyTables {
        // Relaxed: only uniqueness matters; the snapshot is published through
        // the table handle, which orders everything else.
        self.t.generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed).max(1);
        self.t
    }
}
