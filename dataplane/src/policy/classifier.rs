//! The NetworkPolicy classifier: for one endpoint and one direction, which
//! peers may reach which ports.
//!
//! A [`RuleSet`] is compiled from a list of [`PeerRule`]s (a CIDR minus its
//! exceptions, and the ports it opens). Compilation partitions the IPv4 space
//! into intervals over which the set of matching rules is constant, and gives
//! each interval a *peer class*: the union of the ports its rules open, one
//! interned [`PortSet`]. A packet costs one search for its peer's interval and
//! one port check, never a scan over rules:
//!
//! * the interval search is a static 16-ary search tree ([`SearchTree`]): each
//!   level is one 64-byte node compared branch-free, so 100k rules (up to 200k
//!   interval starts) take 5 node visits, 10 rules one;
//! * the port check is a binary search over the class's sorted, merged port
//!   ranges of the packet's protocol (usually one to four ranges).
//!
//! Identical rule sets are shared between endpoints by the compiler (many pods
//! get the same policy), so a rule set is paid for once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use hashbrown::HashMap;

use crate::table::Prefix;

/// IP protocol numbers NetworkPolicy ports name.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// A protocol a NetworkPolicy port may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
        }
    }

    /// The protocol with this IP protocol number, if NetworkPolicy can name it.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            PROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    #[inline(always)]
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that NetworkPolicy does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP, UDP or SCTP")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Protocol, UnknownProtocol> {
        match s {
            "TCP" | "tcp" => Ok(Protocol::Tcp),
            "UDP" | "udp" => Ok(Protocol::Udp),
            "SCTP" | "sctp" => Ok(Protocol::Sctp),
            other => Err(UnknownProtocol(other.to_owned())),
        }
    }
}

/// Ports `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        start: 0,
        end: u16::MAX,
    };

    pub fn one(port: u16) -> PortRange {
        PortRange {
            start: port,
            end: port,
        }
    }
}

/// The ports a peer class may reach: either everything (every protocol, ICMP
/// included: a rule without `ports`), or per protocol a sorted list of disjoint,
/// non-adjacent ranges, plus whether protocols without ports (ICMP, ...) are
/// in. Two sets with the same meaning compare equal: a set that covers every
/// port of every protocol and the portless ones is always `any`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PortSet {
    any: bool,
    /// Protocols other than TCP, UDP and SCTP (only AdminNetworkPolicy's set
    /// arithmetic makes this differ from `any`).
    other: bool,
    ranges: [Box<[PortRange]>; 3],
}

impl PortSet {
    /// Nothing allowed.
    pub fn none() -> PortSet {
        PortSet::default()
    }

    /// Every protocol and port (a rule with no `ports`).
    pub fn all() -> PortSet {
        PortSet {
            any: true,
            ..PortSet::default()
        }
    }

    /// One protocol, the given ranges (normalised here: any order, overlaps allowed).
    pub fn of(proto: Protocol, ranges: impl IntoIterator<Item = PortRange>) -> PortSet {
        let mut s = PortSet::none();
        s.ranges[proto.index()] = normalise(ranges.into_iter().collect());
        s
    }

    pub fn is_all(&self) -> bool {
        self.any
    }

    pub fn is_empty(&self) -> bool {
        !self.any && self.ranges.iter().all(|r| r.is_empty())
    }

    /// The ranges of one protocol (empty when [`PortSet::is_all`]).
    pub fn ranges(&self, proto: Protocol) -> &[PortRange] {
        &self.ranges[proto.index()]
    }

    /// Union with another set.
    pub fn union(&self, other: &PortSet) -> PortSet {
        if self.any || other.any {
            return PortSet::all();
        }
        let mut out = PortSet::none();
        out.other = self.other || other.other;
        for p in Protocol::ALL {
            let i = p.index();
            if other.ranges[i].is_empty() {
                out.ranges[i] = self.ranges[i].clone();
            } else if self.ranges[i].is_empty() {
                out.ranges[i] = other.ranges[i].clone();
            } else {
                let v: Vec<PortRange> = self.ranges[i]
                    .iter()
                    .chain(other.ranges[i].iter())
                    .copied()
                    .collect();
                out.ranges[i] = normalise(v);
            }
        }
        out.canonical()
    }

    /// What this set allows and `other` does not.
    pub fn difference(&self, other: &PortSet) -> PortSet {
        if other.any {
            return PortSet::none();
        }
        let mut out = PortSet::none();
        out.other = (self.any || self.other) && !other.other;
        for p in Protocol::ALL {
            let i = p.index();
            let mine: &[PortRange] = if self.any {
                &[PortRange::ALL]
            } else {
                &self.ranges[i]
            };
            out.ranges[i] = subtract(mine, &other.ranges[i]);
        }
        out.canonical()
    }

    /// Everything on every protocol written out, folded back into `any`.
    fn canonical(mut self) -> PortSet {
        if !self.any && self.other && self.ranges.iter().all(|r| r[..] == [PortRange::ALL]) {
            self = PortSet::all();
        }
        self
    }

    /// Whether a packet of IP protocol `proto` to `port` is allowed.
    #[inline]
    pub fn allows(&self, proto: u8, port: u16) -> bool {
        if self.any {
            return true;
        }
        let r: &[PortRange] = match proto {
            PROTO_TCP => &self.ranges[0],
            PROTO_UDP => &self.ranges[1],
            PROTO_SCTP => &self.ranges[2],
            _ => return self.other,
        };
        matches!(r.get(below(r, port)), Some(x) if x.start <= port)
    }

    /// Bytes this set holds on the heap and inline.
    pub fn memory(&self) -> usize {
        std::mem::size_of::<PortSet>()
            + self
                .ranges
                .iter()
                .map(|r| std::mem::size_of_val(&**r))
                .sum::<usize>()
    }
}

/// How many of the sorted, disjoint ranges `r` end below `port`: a
/// branch-free count for short lists (the usual case: a binary search over a
/// handful of ranges is mostly mispredicted branches), a binary search for
/// long ones.
#[inline(always)]
fn below(r: &[PortRange], port: u16) -> usize {
    if r.len() <= 16 {
        r.iter().fold(0usize, |n, x| n + usize::from(x.end < port))
    } else {
        r.partition_point(|x| x.end < port)
    }
}

/// `a` minus `b`, both sorted and disjoint.
fn subtract(a: &[PortRange], b: &[PortRange]) -> Box<[PortRange]> {
    let mut out = Vec::with_capacity(a.len());
    for r in a {
        let (mut lo, hi) = (u32::from(r.start), u32::from(r.end));
        for h in b {
            let (hs, he) = (u32::from(h.start), u32::from(h.end));
            if he < lo || hs > hi {
                continue;
            }
            if hs > lo {
                out.push(PortRange {
                    start: lo as u16,
                    end: (hs - 1) as u16,
                });
            }
            lo = he + 1;
            if lo > hi {
                break;
            }
        }
        if lo <= hi {
            out.push(PortRange {
                start: lo as u16,
                end: hi as u16,
            });
        }
    }
    normalise(out)
}

/// Sorts and merges overlapping or adjacent ranges; drops reversed ones.
fn normalise(mut v: Vec<PortRange>) -> Box<[PortRange]> {
    v.retain(|r| r.start <= r.end);
    v.sort_unstable();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out.into_boxed_slice()
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.any {
            return f.write_str("any");
        }
        let mut first = true;
        for p in Protocol::ALL {
            for r in self.ranges(p) {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                if r.start == r.end {
                    write!(f, "{}/{p}", r.start)?;
                } else {
                    write!(f, "{}-{}/{p}", r.start, r.end)?;
                }
            }
        }
        if self.other {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str("other protocols")?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// One compiled rule: peers in `cidr` but in none of `except` may use `ports`.
/// A selected pod is a `/32` with no exceptions; an empty `from`/`to` is
/// `0.0.0.0/0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRule {
    pub cidr: Prefix,
    /// Exceptions outside `cidr` are ignored (Kubernetes refuses them).
    pub except: Vec<Prefix>,
    pub ports: PortSet,
}

impl PartialOrd for PortSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PortSet {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.any, self.other, &self.ranges).cmp(&(other.any, other.other, &other.ranges))
    }
}

/// What an AdminNetworkPolicy rule does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    /// Leave the decision to NetworkPolicy (skipping lower admin rules).
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// An AdminNetworkPolicy rule, compiled: its peers and ports, what it does,
/// and its rank (lower is evaluated first: the policy's priority, then the
/// rule's place in it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TieredRule {
    pub rank: u32,
    pub action: Action,
    pub rule: PeerRule,
}

/// A static search tree over sorted `u32` keys whose first key is 0: finds the
/// last key `<=` an address. Level `i + 1` holds the first key of every 16-key
/// node of level `i`; a lookup walks from the single top node down, counting
/// in each node the keys `<=` the address (branch-free, vectorised).
#[derive(Debug, Clone)]
pub struct SearchTree {
    /// Top level first; the last level holds every key.
    levels: Vec<Box<[Node]>>,
    len: usize,
}

const FANOUT: usize = 16;

/// One cache line of keys. Unused tail slots hold `u32::MAX`.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Node([u32; FANOUT]);

impl SearchTree {
    /// A tree over `keys`, which must be sorted, distinct and start with 0
    /// (the builder guarantees it; anything else is refused).
    fn new(keys: &[u32]) -> Option<SearchTree> {
        if keys.first() != Some(&0) || keys.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        let mut levels = Vec::new();
        let mut cur: Vec<u32> = keys.to_vec();
        loop {
            let nodes: Box<[Node]> = cur
                .chunks(FANOUT)
                .map(|c| {
                    let mut n = [u32::MAX; FANOUT];
                    n[..c.len()].copy_from_slice(c);
                    Node(n)
                })
                .collect();
            let done = nodes.len() == 1;
            cur = nodes.iter().map(|n| n.0[0]).collect();
            levels.push(nodes);
            if done {
                break;
            }
        }
        levels.reverse();
        Some(SearchTree {
            levels,
            len: keys.len(),
        })
    }

    /// Index of the last key `<= a`.
    #[inline]
    pub fn rank(&self, a: u32) -> usize {
        let mut j = 0usize;
        for level in &self.levels {
            // `j` is in range: it starts at 0 and is clamped below for the next level.
            let node = &level[j.min(level.len() - 1)];
            let c = node.0.iter().fold(0u32, |n, &k| n + u32::from(k <= a)) as usize;
            j = j * FANOUT + c.saturating_sub(1);
        }
        j.min(self.len - 1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Node visits per lookup.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    pub fn memory(&self) -> usize {
        self.levels
            .iter()
            .map(|l| std::mem::size_of_val(&**l))
            .sum::<usize>()
            + std::mem::size_of::<SearchTree>()
    }
}

/// The compiled rules of one endpoint in one direction.
#[derive(Debug, Clone)]
pub struct RuleSet {
    tree: SearchTree,
    /// Peer class (index into `info`) of each interval.
    classes: Box<[u32]>,
    /// The ports of each class; class 0 is always the empty set.
    info: Box<[ClassInfo]>,
    /// Every class's ranges, TCP then UDP then SCTP, one after another.
    ranges: Box<[PortRange]>,
    rules: usize,
}

/// A peer class's ports, flattened: 12 bytes here plus its ranges in the
/// rule set's one array (two loads, no pointer chasing per protocol).
#[derive(Debug, Clone, Copy, Default)]
struct ClassInfo {
    start: u32,
    /// Ranges of TCP, UDP, SCTP.
    len: [u16; 3],
    any: bool,
    /// Protocols without ports (ICMP, ...) allowed.
    other: bool,
}

impl Default for RuleSet {
    /// No rule: denies everything (an isolating policy with no rules).
    fn default() -> RuleSet {
        RuleSet::new(&[])
    }
}

impl RuleSet {
    /// Compiles rules. Order and duplicates do not matter; the result allows
    /// the union of what the rules allow.
    pub fn new(rules: &[PeerRule]) -> RuleSet {
        RuleSet::with_admin(&[], Some(rules))
    }

    /// Compiles AdminNetworkPolicy rules in front of NetworkPolicy rules:
    /// for each peer and port the admin rule of lowest rank that matches
    /// decides (Allow, Deny, or Pass to NetworkPolicy); what no admin rule
    /// decides, and what a Pass rule passes, is allowed when `np` allows it.
    /// `np` is `None` when no NetworkPolicy isolates the endpoint (all
    /// allowed). The result is still one class per address interval: the
    /// fast path pays nothing for the tiers.
    pub fn with_admin(admin: &[TieredRule], np: Option<&[PeerRule]>) -> RuleSet {
        let rules = np.unwrap_or(&[]);
        let mut ranked: Vec<&TieredRule> = admin.iter().collect();
        ranked.sort_by_key(|r| r.rank);
        let mut ps_ids: HashMap<&PortSet, u32> = HashMap::new();
        let mut ps_list: Vec<&PortSet> = Vec::new();
        // (address, port-set id, +1 / -1), one pair per active interval of a rule.
        let mut events: Vec<(u32, u32, i32)> = Vec::with_capacity((rules.len() + ranked.len()) * 2);
        for r in rules {
            if r.ports.is_empty() {
                continue;
            }
            let id = *ps_ids.entry(&r.ports).or_insert_with(|| {
                ps_list.push(&r.ports);
                ps_list.len() as u32 - 1
            });
            for (lo, hi) in active_intervals(r) {
                events.push((lo, id, 1));
                if hi < u32::MAX {
                    events.push((hi + 1, id, -1));
                }
            }
        }
        // Admin rules get ids after the port sets', in rank order, so an
        // interval's active ids list them in evaluation order.
        let first_admin = ps_list.len() as u32;
        for (k, r) in ranked.iter().enumerate() {
            let id = first_admin + k as u32;
            for (lo, hi) in active_intervals(&r.rule) {
                events.push((lo, id, 1));
                if hi < u32::MAX {
                    events.push((hi + 1, id, -1));
                }
            }
        }
        events.sort_unstable();
        let ports_of_key = |key: &[u32]| -> PortSet {
            let split = key.partition_point(|&id| id < first_admin);
            let np_ports = match np {
                None => PortSet::all(),
                Some(_) => key[..split]
                    .iter()
                    .fold(PortSet::none(), |acc, &id| acc.union(ps_list[id as usize])),
            };
            if split == key.len() {
                return np_ports;
            }
            let (mut allowed, mut decided, mut passed) =
                (PortSet::none(), PortSet::none(), PortSet::none());
            for &id in &key[split..] {
                let r = ranked[(id - first_admin) as usize];
                let m = r.rule.ports.difference(&decided);
                match r.action {
                    Action::Allow => allowed = allowed.union(&m),
                    Action::Deny => {}
                    Action::Pass => passed = passed.union(&m),
                }
                decided = decided.union(&m);
            }
            allowed.union(&np_ports.difference(&decided.difference(&passed)))
        };

        let no_rule = ports_of_key(&[]);
        let mut starts: Vec<u32> = vec![0];
        let mut classes: Vec<u32> = vec![0];
        let mut port_sets: Vec<PortSet> = vec![no_rule.clone()];
        let mut class_of: HashMap<Vec<u32>, u32> = HashMap::new();
        class_of.insert(Vec::new(), 0);
        let mut set_ids: HashMap<PortSet, u32> = HashMap::new();
        set_ids.insert(no_rule, 0);
        let mut active: BTreeMap<u32, u32> = BTreeMap::new();
        let mut i = 0;
        while i < events.len() {
            let addr = events[i].0;
            while i < events.len() && events[i].0 == addr {
                let (_, id, d) = events[i];
                let c = active.entry(id).or_insert(0);
                if d > 0 {
                    *c += 1;
                } else {
                    *c -= 1;
                    if *c == 0 {
                        active.remove(&id);
                    }
                }
                i += 1;
            }
            let key: Vec<u32> = active.keys().copied().collect();
            let class = match class_of.get(&key) {
                Some(&c) => c,
                None => {
                    let set = ports_of_key(&key);
                    // Different rule combinations often open the same ports.
                    let c = match set_ids.get(&set) {
                        Some(&c) => c,
                        None => {
                            port_sets.push(set.clone());
                            let c = port_sets.len() as u32 - 1;
                            set_ids.insert(set, c);
                            c
                        }
                    };
                    class_of.insert(key, c);
                    c
                }
            };
            if addr == 0 {
                classes[0] = class;
            } else if classes.last() != Some(&class) {
                starts.push(addr);
                classes.push(class);
            }
        }
        let tree = SearchTree::new(&starts).unwrap_or_else(|| {
            // Unreachable: starts are built sorted, distinct and from 0.
            SearchTree::new(&[0]).unwrap_or(SearchTree {
                levels: vec![vec![Node([0; FANOUT])].into_boxed_slice()],
                len: 1,
            })
        });
        let mut info = Vec::with_capacity(port_sets.len());
        let mut flat: Vec<PortRange> = Vec::new();
        for set in &port_sets {
            let start = flat.len() as u32;
            let mut len = [0u16; 3];
            for p in Protocol::ALL {
                let r = set.ranges(p);
                // At most 32768 disjoint, non-adjacent ranges fit in 16 bits.
                len[p.index()] = r.len().min(usize::from(u16::MAX)) as u16;
                flat.extend_from_slice(&r[..usize::from(len[p.index()])]);
            }
            info.push(ClassInfo {
                start,
                len,
                any: set.is_all(),
                other: set.other,
            });
        }
        RuleSet {
            tree,
            classes: classes.into_boxed_slice(),
            info: info.into_boxed_slice(),
            ranges: flat.into_boxed_slice(),
            rules: rules.len() + ranked.len(),
        }
    }

    #[inline(always)]
    fn class(&self, peer: u32) -> ClassInfo {
        let i = self.tree.rank(peer);
        let c = self.classes.get(i).copied().unwrap_or(0);
        self.info.get(c as usize).copied().unwrap_or_default()
    }

    /// The ports `peer` may use (operators, tests; the fast path uses
    /// [`RuleSet::allows`]).
    pub fn ports_of(&self, peer: u32) -> PortSet {
        self.class_ports(self.class(peer))
    }

    fn class_ports(&self, c: ClassInfo) -> PortSet {
        if c.any {
            return PortSet::all();
        }
        let mut out = PortSet {
            other: c.other,
            ..PortSet::none()
        };
        let mut at = c.start as usize;
        for p in Protocol::ALL {
            let n = usize::from(c.len[p.index()]);
            let r = self.ranges.get(at..at + n).unwrap_or(&[]);
            out = out.union(&PortSet::of(p, r.iter().copied()));
            at += n;
        }
        out
    }

    /// Whether `peer` may send (ingress) or be sent (egress) a packet of IP
    /// protocol `proto` to `port`.
    #[inline]
    pub fn allows(&self, peer: u32, proto: u8, port: u16) -> bool {
        let c = self.class(peer);
        if c.any {
            return true;
        }
        let [tcp, udp, sctp] = c.len.map(usize::from);
        let start = c.start as usize;
        let (from, n) = match proto {
            PROTO_TCP => (start, tcp),
            PROTO_UDP => (start + tcp, udp),
            PROTO_SCTP => (start + tcp + udp, sctp),
            _ => return c.other,
        };
        let Some(r) = self.ranges.get(from..from + n) else {
            return false;
        };
        matches!(r.get(below(r, port)), Some(x) if x.start <= port)
    }

    /// Rules this set was compiled from.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// Intervals of the address space with their own class.
    pub fn intervals(&self) -> usize {
        self.tree.len()
    }

    /// Distinct peer classes.
    pub fn classes(&self) -> usize {
        self.info.len()
    }

    /// Node visits of one peer lookup.
    pub fn depth(&self) -> usize {
        self.tree.depth()
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        self.tree.memory()
            + std::mem::size_of_val(&*self.classes)
            + std::mem::size_of_val(&*self.info)
            + std::mem::size_of_val(&*self.ranges)
            + std::mem::size_of::<RuleSet>()
    }

    /// Every interval `(first address, ports)`, for operators and tests.
    pub fn dump(&self) -> Vec<(Ipv4Addr, PortSet)> {
        let mut out = Vec::with_capacity(self.tree.len());
        let mut keys: Vec<u32> = Vec::with_capacity(self.tree.len());
        if let Some(last) = self.tree.levels.last() {
            keys.extend(last.iter().flat_map(|n| n.0).take(self.tree.len()));
        }
        for (k, c) in keys.iter().zip(self.classes.iter()) {
            let info = self.info.get(*c as usize).copied().unwrap_or_default();
            out.push((Ipv4Addr::from(*k), self.class_ports(info)));
        }
        out
    }
}

/// The address intervals (inclusive) where a rule applies: its CIDR minus its
/// exceptions.
fn active_intervals(r: &PeerRule) -> Vec<(u32, u32)> {
    let lo = r.cidr.addr_u32();
    let hi = lo | (r.cidr.size() - 1) as u32;
    let mut holes: Vec<(u32, u32)> = r
        .except
        .iter()
        .filter(|e| r.cidr.contains_prefix(e))
        .map(|e| (e.addr_u32(), e.addr_u32() | (e.size() - 1) as u32))
        .collect();
    holes.sort_unstable();
    let mut out = Vec::with_capacity(holes.len() + 1);
    let mut next = u64::from(lo);
    for (a, b) in holes {
        if u64::from(a) > next {
            out.push((next as u32, a - 1));
        }
        next = next.max(u64::from(b) + 1);
    }
    if next <= u64::from(hi) {
        out.push((next as u32, hi));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pfx(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    fn tcp(ports: &[u16]) -> PortSet {
        PortSet::of(Protocol::Tcp, ports.iter().map(|&p| PortRange::one(p)))
    }

    #[test]
    fn port_sets_normalise_and_union() {
        let a = PortSet::of(
            Protocol::Tcp,
            [
                PortRange { start: 80, end: 90 },
                PortRange {
                    start: 85,
                    end: 100,
                },
                PortRange {
                    start: 101,
                    end: 101,
                },
                PortRange { start: 5, end: 1 },
            ],
        );
        assert_eq!(
            a.ranges(Protocol::Tcp),
            &[PortRange {
                start: 80,
                end: 101
            }]
        );
        assert!(a.allows(PROTO_TCP, 80) && a.allows(PROTO_TCP, 101));
        assert!(!a.allows(PROTO_TCP, 79) && !a.allows(PROTO_TCP, 102));
        assert!(!a.allows(PROTO_UDP, 80) && !a.allows(1, 0));
        let u = a.union(&PortSet::of(Protocol::Udp, [PortRange::one(53)]));
        assert!(u.allows(PROTO_UDP, 53) && u.allows(PROTO_TCP, 90));
        assert_eq!(u.to_string(), "80-101/TCP,53/UDP");
        assert!(u.union(&PortSet::all()).allows(1, 0));
        assert!(PortSet::none().is_empty());
        assert_eq!(PortSet::none().to_string(), "none");
    }

    #[test]
    fn cidr_with_except_and_pods() {
        let rules = vec![
            PeerRule {
                cidr: pfx("198.19.0.0/16"),
                except: vec![pfx("198.19.1.0/24"), pfx("10.0.0.0/8")],
                ports: tcp(&[80]),
            },
            PeerRule {
                cidr: pfx("198.19.1.7/32"),
                except: vec![],
                ports: tcp(&[81]),
            },
            PeerRule {
                cidr: pfx("198.19.2.0/24"),
                except: vec![],
                ports: PortSet::all(),
            },
        ];
        let rs = RuleSet::new(&rules);
        assert!(rs.allows(ip("198.19.0.1"), PROTO_TCP, 80));
        assert!(!rs.allows(ip("198.19.0.1"), PROTO_TCP, 81));
        assert!(!rs.allows(ip("198.19.1.1"), PROTO_TCP, 80));
        assert!(rs.allows(ip("198.19.1.7"), PROTO_TCP, 81));
        assert!(!rs.allows(ip("198.19.1.7"), PROTO_TCP, 80));
        assert!(rs.allows(ip("198.19.2.9"), 1, 0));
        assert!(rs.allows(ip("198.19.255.255"), PROTO_TCP, 80));
        assert!(!rs.allows(ip("198.20.0.0"), PROTO_TCP, 80));
        assert!(!rs.allows(0, PROTO_TCP, 80) && !rs.allows(u32::MAX, PROTO_TCP, 80));
        assert_eq!(rs.dump()[0], (Ipv4Addr::UNSPECIFIED, PortSet::none()));
        assert_eq!(rs.ports_of(ip("198.19.1.7")).to_string(), "81/TCP");
        assert_eq!(rs.ports_of(ip("198.19.2.7")), PortSet::all());
        assert_eq!(rs.ports_of(ip("198.19.0.7")).to_string(), "80/TCP");
    }

    #[test]
    fn empty_and_everything() {
        let none = RuleSet::default();
        assert!(!none.allows(ip("1.2.3.4"), PROTO_TCP, 80));
        assert_eq!(none.intervals(), 1);
        let all = RuleSet::new(&[PeerRule {
            cidr: pfx("0.0.0.0/0"),
            except: vec![],
            ports: PortSet::all(),
        }]);
        assert!(all.allows(0, 1, 0) && all.allows(u32::MAX, 47, 0));
        assert_eq!(all.intervals(), 1);
    }

    #[test]
    fn search_tree_depth_and_edges() {
        for n in [1usize, 2, 15, 16, 17, 255, 256, 257, 4097, 70_000] {
            let keys: Vec<u32> = (0..n as u32).map(|i| i * 7).collect();
            let t = SearchTree::new(&keys).unwrap();
            for (i, &k) in keys.iter().enumerate().step_by(1 + n / 300) {
                assert_eq!(t.rank(k), i);
                assert_eq!(t.rank(k + 3), i);
            }
            assert_eq!(t.rank(u32::MAX), n - 1);
        }
        assert!(SearchTree::new(&[]).is_none());
        assert!(SearchTree::new(&[1, 2]).is_none());
        assert!(SearchTree::new(&[0, 2, 2]).is_none());
        let keys: Vec<u32> = (0..200_000u32).map(|i| i * 3).collect();
        assert_eq!(SearchTree::new(&keys).unwrap().depth(), 5);
        let keys: Vec<u32> = vec![0, u32::MAX];
        assert_eq!(SearchTree::new(&keys).unwrap().rank(u32::MAX), 1);
    }

    fn naive(rules: &[PeerRule], a: u32, proto: u8, port: u16) -> bool {
        rules.iter().any(|r| {
            let addr = Ipv4Addr::from(a);
            r.cidr.contains(addr)
                && !r
                    .except
                    .iter()
                    .any(|e| r.cidr.contains_prefix(e) && e.contains(addr))
                && r.ports.allows(proto, port)
        })
    }

    fn arb_prefix() -> impl Strategy<Value = Prefix> {
        // Addresses in a small space so that prefixes overlap often.
        (0u32..64, 24u8..=32)
            .prop_map(|(a, l)| Prefix::new(Ipv4Addr::from(0xc613_0000 | (a << 2)), l).unwrap())
    }

    fn arb_ports() -> impl Strategy<Value = PortSet> {
        prop_oneof![
            Just(PortSet::all()),
            (0u16..6, 0u16..4).prop_map(|(s, w)| PortSet::of(
                Protocol::Tcp,
                [PortRange {
                    start: s,
                    end: s + w
                }]
            )),
            (0u16..6).prop_map(|p| PortSet::of(Protocol::Udp, [PortRange::one(p)])),
        ]
    }

    proptest! {
        #[test]
        fn matches_naive(rules in proptest::collection::vec(
            (arb_prefix(), proptest::collection::vec(arb_prefix(), 0..3), arb_ports())
                .prop_map(|(cidr, except, ports)| PeerRule { cidr, except, ports }),
            0..12),
            probes in proptest::collection::vec((0u32..300, 0u16..10, any::<bool>()), 64)) {
            let rs = RuleSet::new(&rules);
            for (a, port, udp) in probes {
                let a = 0xc613_0000 - 20 + a;
                let proto = if udp { PROTO_UDP } else { PROTO_TCP };
                prop_assert_eq!(rs.allows(a, proto, port), naive(&rules, a, proto, port),
                    "{} {} {}", Ipv4Addr::from(a), proto, port);
            }
        }

        #[test]
        fn admin_tiers_match_naive(
            admin in proptest::collection::vec(
                (0u32..6, 0u8..3, arb_prefix(), proptest::collection::vec(arb_prefix(), 0..2), arb_ports()),
                0..8),
            np in proptest::option::of(proptest::collection::vec(
                (arb_prefix(), arb_ports()).prop_map(|(cidr, ports)| PeerRule { cidr, except: vec![], ports }),
                0..6)),
            probes in proptest::collection::vec((0u32..300, 0u16..10, 0u8..3), 64)) {
            let admin: Vec<TieredRule> = admin
                .into_iter()
                .map(|(rank, a, cidr, except, ports)| TieredRule {
                    rank,
                    action: [Action::Allow, Action::Deny, Action::Pass][usize::from(a)],
                    rule: PeerRule { cidr, except, ports },
                })
                .collect();
            let rs = RuleSet::with_admin(&admin, np.as_deref());
            let mut ranked = admin.clone();
            ranked.sort_by_key(|r| r.rank);
            for (a, port, p) in probes {
                let a = 0xc613_0000 - 20 + a;
                let proto = [PROTO_TCP, PROTO_UDP, 1][usize::from(p)];
                // The admin rule of lowest rank that matches decides.
                let decided = ranked
                    .iter()
                    .find(|r| naive(std::slice::from_ref(&r.rule), a, proto, port))
                    .map(|r| r.action);
                let want = match decided {
                    Some(Action::Allow) => true,
                    Some(Action::Deny) => false,
                    Some(Action::Pass) | None => match &np {
                        None => true,
                        Some(rules) => naive(rules, a, proto, port),
                    },
                };
                prop_assert_eq!(rs.allows(a, proto, port), want,
                    "{} proto {} port {}", Ipv4Addr::from(a), proto, port);
            }
        }

        #[test]
        fn port_set_difference_matches_membership(
            a in arb_ports(), b in arb_ports(), c in arb_ports(),
            probes in proptest::collection::vec((0u16..12, 0u8..3), 32)) {
            let ab = a.union(&b);
            let d = ab.difference(&c);
            for (port, p) in probes {
                let proto = [PROTO_TCP, PROTO_UDP, 1][usize::from(p)];
                prop_assert_eq!(
                    d.allows(proto, port),
                    ab.allows(proto, port) && !c.allows(proto, port),
                    "({} | {}) - {} at {}/{}: {}", a, b, c, proto, port, d
                );
            }
            // Canonical form: removing nothing from everything is `any` again.
            prop_assert!(PortSet::all().difference(&PortSet::none()).is_all());
        }
    }
}
