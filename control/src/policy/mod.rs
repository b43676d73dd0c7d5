//! The NetworkPolicy compiler: Kubernetes Pods, Namespaces and
//! NetworkPolicies in, the dataplane's [`PolicyTables`] out.
//!
//! For every local endpoint and direction it gathers the rules of the
//! policies that select the endpoint's pod, expands their peers into address
//! rules (pod selectors become the selected pods' `/32`s, named ports are
//! resolved per destination pod) and compiles them into a
//! [`RuleSet`](sluice_dataplane::policy::RuleSet).
//!
//! # Incremental
//! Results are cached per *identity*: a namespace, a label set and a set of
//! named container ports. Pods with the same identity (replicas) share one
//! result, and identical rule lists share one compiled rule set. A change
//! invalidates only the identities it can affect:
//! * a policy: the identities its (old and new) pod selector selects;
//! * a pod (labels, address, ports, coming or going): the identities selected
//!   by policies with a peer that matches it (old or new);
//! * a namespace's labels: the identities selected by policies whose
//!   namespace selector matches (old or new labels).
//!
//! [`Compiler::build`] then recompiles what is missing and assembles the
//! snapshot. [`Compiler::stats`] counts the work, so tests can check it.
//!
//! # Addresses
//! A local pod's address comes from its CNI attachment
//! ([`Compiler::set_local_endpoints`]), other pods' from `status.podIP`. Each
//! pod address gets a *generation* that changes whenever the address passes
//! to another pod, published in the snapshot so that the workers' connection
//! tables drop the old pod's connections (see `sluice_dataplane::policy`).

pub mod admin;
mod explain;
mod model;
mod selector;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod truth_table;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_dataplane::policy::{
    EndpointPolicy, PeerRule, PolicyTables, PolicyTablesBuilder, PortSet, RuleSet, RuleSetId,
    TieredRule,
};

use admin::{AdminError, AdminNetworkPolicy, AdminPolicy};
use sluice_dataplane::table::Prefix;

pub use explain::{AdminRef, Explanation, RuleRef, Side, Target};
pub use model::{
    default_namespace_labels, namespace_info, parse_policy, pod_info, NamedPort, Namespaces, Peer,
    PodInfo, PodKey, Policy, PolicyError, PolicyKey, Port, Rule, NAMESPACE_NAME_LABEL,
};
pub use selector::{Labels, Requirement, Selector, SelectorError};

/// What a rule set with admin tiers is compiled from: the admin rules and
/// the NetworkPolicy rules (`None`: not isolated).
type AdminKey = (Vec<TieredRule>, Option<Vec<PeerRule>>);

/// What identifies a compiled result: pods with equal identities get the
/// same rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    labels: Labels,
    ports: Vec<NamedPort>,
}

/// One identity's compiled rule sets (`None`: not isolated).
#[derive(Debug, Clone)]
struct Compiled {
    ingress: Option<Arc<RuleSet>>,
    egress: Option<Arc<RuleSet>>,
}

/// Counters of the compiler's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Identities whose rules were gathered and expanded.
    pub identities_compiled: u64,
    /// Rule sets compiled into classifier tables (the rest were shared).
    pub rule_sets_compiled: u64,
    /// Snapshots built.
    pub builds: u64,
}

/// Who holds a pod address, and under which generation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pod: PodKey,
    uid: Option<String>,
    generation: u32,
}

/// The compiler. Feed it objects as the watch delivers them, then
/// [`Compiler::build`] a snapshot. See the module documentation.
#[derive(Debug, Default)]
pub struct Compiler {
    namespaces: HashMap<String, Labels>,
    pods: BTreeMap<PodKey, PodInfo>,
    policies: BTreeMap<PolicyKey, Arc<Policy>>,
    local: BTreeMap<PodKey, Ipv4Addr>,
    holders: HashMap<Ipv4Addr, Holder>,
    next_generation: u32,
    cache: HashMap<String, HashMap<Identity, Compiled>>,
    rule_sets: HashMap<Vec<PeerRule>, Arc<RuleSet>>,
    /// AdminNetworkPolicies by name.
    admin: BTreeMap<String, Arc<AdminPolicy>>,
    /// Rule sets with admin tiers, by (admin rules, NetworkPolicy rules).
    admin_sets: HashMap<AdminKey, Arc<RuleSet>>,
    isolate_unknown: bool,
    stats: Stats,
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// Local endpoints whose pod the compiler does not know yet are isolated
    /// in both directions with nothing allowed (`true`), or open (`false`,
    /// the default).
    pub fn set_isolate_unknown(&mut self, isolate: bool) {
        self.isolate_unknown = isolate;
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- inputs ----

    pub fn upsert_namespace(&mut self, ns: &Namespace) -> Result<(), PolicyError> {
        let (name, labels) = namespace_info(ns)?;
        self.set_namespace(name, labels);
        Ok(())
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.set_namespace(name.to_owned(), default_namespace_labels(name));
        self.namespaces.remove(name);
    }

    fn set_namespace(&mut self, name: String, labels: Labels) {
        let old = self.namespace_labels(&name);
        if old == labels || self.cache.is_empty() {
            self.namespaces.insert(name, labels);
            return;
        }
        if !self.admin.is_empty() {
            // Admin subjects and peers select namespaces by label anywhere
            // in the cluster: recompile everything (label changes are rare).
            self.cache.clear();
            self.namespaces.insert(name, labels);
            return;
        }
        let affected: Vec<Arc<Policy>> = self
            .policies
            .values()
            .filter(|p| {
                rules(p).any(|r| {
                    r.peers.iter().flatten().any(|peer| match peer {
                        Peer::Pods {
                            namespaces: Namespaces::Matching(s),
                            ..
                        } => s.matches(&old) || s.matches(&labels),
                        _ => false,
                    })
                })
            })
            .cloned()
            .collect();
        for p in affected {
            self.invalidate_selected(&p);
        }
        self.namespaces.insert(name, labels);
    }

    /// Adds or replaces an AdminNetworkPolicy. Admin policies select pods in
    /// any namespace, so every compiled result is recomputed at the next
    /// build (they change rarely).
    pub fn upsert_admin_policy(&mut self, anp: &AdminNetworkPolicy) -> Result<(), AdminError> {
        let a = admin::parse_admin(anp)?;
        self.admin.insert(a.name.clone(), Arc::new(a));
        self.cache.clear();
        Ok(())
    }

    pub fn remove_admin_policy(&mut self, name: &str) {
        if self.admin.remove(name).is_some() {
            self.cache.clear();
        }
    }

    /// The AdminNetworkPolicies in evaluation order (priority, then name).
    fn admin_in_order(&self) -> Vec<&Arc<AdminPolicy>> {
        let mut v: Vec<&Arc<AdminPolicy>> = self.admin.values().collect();
        v.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        v
    }

    /// The admin rules of an identity, per direction, ranked in evaluation
    /// order.
    fn expand_admin(
        &self,
        ns: &str,
        labels: &Labels,
        own_ports: &[NamedPort],
    ) -> (Vec<TieredRule>, Vec<TieredRule>) {
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        if self.admin.is_empty() {
            return (ingress, egress);
        }
        let ns_labels = self.namespace_labels(ns);
        let mut rank = 0u32;
        for a in self.admin_in_order() {
            if !a.selects(&ns_labels, labels) {
                continue;
            }
            for (rules, out, egress_dir) in [
                (&a.ingress, &mut ingress, false),
                (&a.egress, &mut egress, true),
            ] {
                for r in rules {
                    let mut peer_rules = Vec::new();
                    if egress_dir {
                        self.expand_egress(&r.rule, &mut peer_rules);
                    } else {
                        self.expand_ingress(&r.rule, own_ports, &mut peer_rules);
                    }
                    out.extend(peer_rules.into_iter().map(|rule| TieredRule {
                        rank,
                        action: r.action,
                        rule,
                    }));
                    rank += 1;
                }
            }
        }
        (ingress, egress)
    }

    pub fn upsert_pod(&mut self, pod: &Pod) -> Result<(), PolicyError> {
        let (key, info) = pod_info(pod)?;
        let old = self.pods.get(&key).cloned();
        if old.as_ref() == Some(&info) {
            return Ok(());
        }
        let old_ip = old.as_ref().and_then(|o| self.address(&key, o));
        self.pod_changed(&key, old.as_ref(), Some(&info));
        let new_ip = self.address(&key, &info);
        self.pods.insert(key.clone(), info);
        self.rehome(&key, old_ip, new_ip);
        Ok(())
    }

    pub fn remove_pod(&mut self, key: &PodKey) {
        let Some(old) = self.pods.get(key).cloned() else {
            return;
        };
        let old_ip = self.address(key, &old);
        self.pod_changed(key, Some(&old), None);
        self.pods.remove(key);
        self.rehome(key, old_ip, None);
    }

    pub fn upsert_policy(&mut self, np: &NetworkPolicy) -> Result<(), PolicyError> {
        let p = Arc::new(parse_policy(np)?);
        if let Some(old) = self.policies.get(&p.key).cloned() {
            if *old == *p {
                return Ok(());
            }
            self.invalidate_selected(&old);
        }
        self.invalidate_selected(&p);
        self.policies.insert(p.key.clone(), p);
        Ok(())
    }

    pub fn remove_policy(&mut self, key: &PolicyKey) {
        if let Some(old) = self.policies.remove(key) {
            self.invalidate_selected(&old);
        }
    }

    /// The pods attached on this node and their addresses (from the CNI
    /// attachment, which may precede `status.podIP`). Replaces the previous set.
    pub fn set_local_endpoints(&mut self, eps: impl IntoIterator<Item = (PodKey, Ipv4Addr)>) {
        let new: BTreeMap<PodKey, Ipv4Addr> = eps.into_iter().collect();
        let keys: HashSet<PodKey> = self.local.keys().chain(new.keys()).cloned().collect();
        for key in keys {
            let (a, b) = (self.local.get(&key).copied(), new.get(&key).copied());
            if a == b {
                continue;
            }
            let Some(info) = self.pods.get(&key).cloned() else {
                self.set_local(&key, b);
                continue;
            };
            let old_ip = self.address(&key, &info);
            self.set_local(&key, b);
            let new_ip = self.address(&key, &info);
            if old_ip != new_ip {
                // The same pod, seen at its old and its new address.
                self.set_local(&key, a);
                self.pod_changed(&key, Some(&info), None);
                self.set_local(&key, b);
                self.pod_changed(&key, None, Some(&info));
                self.rehome(&key, old_ip, new_ip);
            }
        }
        // Endpoints of unknown pods still get a generation for their address.
        for (key, ip) in &new {
            if !self.pods.contains_key(key) {
                self.hold(key, None, *ip);
            }
        }
    }

    fn set_local(&mut self, key: &PodKey, ip: Option<Ipv4Addr>) {
        match ip {
            Some(ip) => self.local.insert(key.clone(), ip),
            None => self.local.remove(key),
        };
    }

    // ---- queries ----

    pub fn policy(&self, key: &PolicyKey) -> Option<&Policy> {
        self.policies.get(key).map(|p| &**p)
    }

    pub fn pod(&self, key: &PodKey) -> Option<&PodInfo> {
        self.pods.get(key)
    }

    /// A pod's address: its local attachment's, else `status.podIP`.
    pub fn pod_ip(&self, key: &PodKey) -> Option<Ipv4Addr> {
        self.pods.get(key).and_then(|p| self.address(key, p))
    }

    /// The pod holding an address, if any.
    pub fn pod_at(&self, ip: Ipv4Addr) -> Option<&PodKey> {
        self.holders
            .get(&ip)
            .map(|h| &h.pod)
            .filter(|k| self.pods.contains_key(*k))
    }

    /// A namespace's labels (with the name label, also for unknown ones).
    pub fn namespace_labels(&self, name: &str) -> Labels {
        self.ns_labels(name).into_owned()
    }

    fn ns_labels(&self, name: &str) -> std::borrow::Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(l) => std::borrow::Cow::Borrowed(l),
            None => std::borrow::Cow::Owned(default_namespace_labels(name)),
        }
    }

    fn address(&self, key: &PodKey, p: &PodInfo) -> Option<Ipv4Addr> {
        if !p.active {
            return None;
        }
        self.local.get(key).copied().or(p.status_ip)
    }

    // ---- invalidation ----

    /// Forgets the results of every identity `p` selects.
    fn invalidate_selected(&mut self, p: &Policy) {
        if let Some(ids) = self.cache.get_mut(&p.key.namespace) {
            ids.retain(|id, _| !p.selector.matches(&id.labels));
        }
    }

    /// A pod changed from `old` to `new` (either may be absent): forgets the
    /// results of identities whose rules may name it as a peer.
    fn pod_changed(&mut self, key: &PodKey, old: Option<&PodInfo>, new: Option<&PodInfo>) {
        if self.cache.is_empty() {
            // Nothing compiled yet (a bulk load): nothing to forget.
            return;
        }
        let ns_labels = self.namespace_labels(&key.namespace);
        let admin_peer = self.admin.values().any(|a| {
            a.ingress.iter().chain(&a.egress).any(|r| {
                r.rule.peers.iter().flatten().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        namespaces.matches(&key.namespace, &ns_labels)
                            && [old, new]
                                .into_iter()
                                .flatten()
                                .any(|p| pods.matches(&p.labels))
                    }
                    _ => false,
                })
            })
        });
        if admin_peer {
            // An admin rule names this pod as a peer: its subjects may be
            // anywhere, so recompile everything.
            self.cache.clear();
            return;
        }
        let views: Vec<(&Labels, Option<Ipv4Addr>)> = [old, new]
            .into_iter()
            .flatten()
            .map(|p| (&p.labels, self.address(key, p)))
            .collect();
        let affected: Vec<Arc<Policy>> = self
            .policies
            .values()
            .filter(|p| {
                views
                    .iter()
                    .any(|(labels, ip)| depends_on_pod(p, &key.namespace, &ns_labels, labels, *ip))
            })
            .cloned()
            .collect();
        for p in affected {
            self.invalidate_selected(&p);
        }
    }

    /// Moves address ownership when a pod's address changes.
    fn rehome(&mut self, key: &PodKey, old: Option<Ipv4Addr>, new: Option<Ipv4Addr>) {
        if old == new && old.is_some() {
            // Same address: still refresh the holder's uid below.
        } else if let Some(ip) = old {
            if self.holders.get(&ip).is_some_and(|h| h.pod == *key) {
                self.holders.remove(&ip);
            }
        }
        if let Some(ip) = new {
            let uid = self.pods.get(key).and_then(|p| p.uid.clone());
            self.hold(key, uid, ip);
        }
    }

    fn hold(&mut self, key: &PodKey, uid: Option<String>, ip: Ipv4Addr) {
        match self.holders.get_mut(&ip) {
            Some(h) if h.pod == *key && (h.uid == uid || h.uid.is_none() || uid.is_none()) => {
                if uid.is_some() {
                    h.uid = uid;
                }
            }
            _ => {
                self.next_generation = self.next_generation.wrapping_add(1).max(1);
                self.holders.insert(
                    ip,
                    Holder {
                        pod: key.clone(),
                        uid,
                        generation: self.next_generation,
                    },
                );
            }
        }
    }

    // ---- compilation ----

    /// Compiles what changed and returns the snapshot for the local endpoints.
    pub fn build(&mut self) -> Arc<PolicyTables> {
        self.stats.builds += 1;
        let mut b = PolicyTablesBuilder::new();
        let mut ids: HashMap<*const RuleSet, RuleSetId> = HashMap::new();
        let mut intern = |b: &mut PolicyTablesBuilder, rs: &Option<Arc<RuleSet>>| {
            rs.as_ref().map(|rs| {
                *ids.entry(Arc::as_ptr(rs))
                    .or_insert_with(|| b.add_rule_set(rs.clone()))
            })
        };
        let local: Vec<(PodKey, Ipv4Addr)> =
            self.local.iter().map(|(k, ip)| (k.clone(), *ip)).collect();
        let mut used: HashMap<String, HashSet<Identity>> = HashMap::new();
        for (key, ip) in local {
            let Some(info) = self.pods.get(&key) else {
                continue;
            };
            let id = Identity {
                labels: info.labels.clone(),
                ports: info.ports.clone(),
            };
            let c = self.compiled(&key.namespace, &id);
            let policy = EndpointPolicy {
                ingress: intern(&mut b, &c.ingress),
                egress: intern(&mut b, &c.egress),
            };
            // Ids come from add_rule_set just above: never dangling.
            let _ = b.endpoint(ip, policy);
            used.entry(key.namespace).or_default().insert(id);
        }
        if self.isolate_unknown {
            let deny = intern(&mut b, &Some(self.rule_set(Vec::new())));
            let _ = b.unknown(EndpointPolicy {
                ingress: deny,
                egress: deny,
            });
        }
        for (ip, h) in &self.holders {
            b.ip_generation(*ip, h.generation);
        }
        // Drop results no local endpoint uses any more.
        self.cache.retain(|ns, ids| {
            let keep = used.get(ns);
            ids.retain(|id, _| keep.is_some_and(|k| k.contains(id)));
            !ids.is_empty()
        });
        self.rule_sets.retain(|_, rs| Arc::strong_count(rs) > 1);
        self.admin_sets.retain(|_, rs| Arc::strong_count(rs) > 1);
        Arc::new(b.build())
    }

    /// The cached result for an identity, compiled if missing.
    fn compiled(&mut self, ns: &str, id: &Identity) -> Compiled {
        if let Some(c) = self.cache.get(ns).and_then(|m| m.get(id)) {
            return c.clone();
        }
        self.stats.identities_compiled += 1;
        let (ingress, egress) = self.expand(ns, &id.labels, &id.ports);
        let (admin_in, admin_out) = self.expand_admin(ns, &id.labels, &id.ports);
        let c = Compiled {
            ingress: self.tiered(admin_in, ingress),
            egress: self.tiered(admin_out, egress),
        };
        self.cache
            .entry(ns.to_owned())
            .or_default()
            .insert(id.clone(), c.clone());
        c
    }

    /// One direction's rule set: NetworkPolicy alone (`None` when not
    /// isolated), or admin tiers in front of it.
    fn tiered(
        &mut self,
        mut admin: Vec<TieredRule>,
        np: Option<Vec<PeerRule>>,
    ) -> Option<Arc<RuleSet>> {
        if admin.is_empty() {
            return np.map(|r| self.rule_set(r));
        }
        admin.sort_unstable();
        admin.dedup();
        let np = np.map(|mut r| {
            r.sort_unstable();
            r.dedup();
            r
        });
        let key = (admin, np);
        if let Some(rs) = self.admin_sets.get(&key) {
            return Some(rs.clone());
        }
        self.stats.rule_sets_compiled += 1;
        let rs = Arc::new(RuleSet::with_admin(&key.0, key.1.as_deref()));
        self.admin_sets.insert(key, rs.clone());
        Some(rs)
    }

    fn rule_set(&mut self, mut rules: Vec<PeerRule>) -> Arc<RuleSet> {
        rules.sort_unstable();
        rules.dedup();
        if let Some(rs) = self.rule_sets.get(&rules) {
            return rs.clone();
        }
        self.stats.rule_sets_compiled += 1;
        let rs = Arc::new(RuleSet::new(&rules));
        self.rule_sets.insert(rules, rs.clone());
        rs
    }

    /// Policies of namespace `ns` in key order.
    fn policies_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        let start = PolicyKey::new(ns, "");
        self.policies
            .range(start..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, p)| p)
    }

    /// Pods with an address that `peer` (of a policy in `policy_ns`) selects.
    fn peer_pods<'a>(
        &'a self,
        namespaces: &'a Namespaces,
        pods: &'a Selector,
    ) -> impl Iterator<Item = (&'a PodKey, &'a PodInfo, Ipv4Addr)> + 'a {
        let range: Box<dyn Iterator<Item = (&PodKey, &PodInfo)>> = match namespaces {
            Namespaces::Own(ns) => Box::new(
                self.pods
                    .range(PodKey::new(ns.as_str(), "")..)
                    .take_while(move |(k, _)| k.namespace == *ns),
            ),
            Namespaces::Matching(_) => Box::new(self.pods.iter()),
        };
        let mut last_ns: Option<(&str, bool)> = None;
        range.filter_map(move |(k, p)| {
            let ns_ok = match last_ns {
                Some((n, ok)) if n == k.namespace => ok,
                _ => {
                    let ok = namespaces.matches(&k.namespace, &self.ns_labels(&k.namespace));
                    last_ns = Some((k.namespace.as_str(), ok));
                    ok
                }
            };
            if !ns_ok || !pods.matches(&p.labels) {
                return None;
            }
            self.address(k, p).map(|ip| (k, p, ip))
        })
    }

    /// Every pod with an address in `cidr` but in none of `except` (for
    /// named ports on ipBlock peers), or every pod when `cidr` is `None`.
    fn pods_in<'a>(
        &'a self,
        block: Option<(&'a Prefix, &'a [Prefix])>,
    ) -> impl Iterator<Item = (&'a PodInfo, Ipv4Addr)> + 'a {
        self.pods.iter().filter_map(move |(k, p)| {
            let ip = self.address(k, p)?;
            match block {
                None => Some((p, ip)),
                Some((cidr, except)) => (cidr.contains(ip)
                    && !except
                        .iter()
                        .any(|e| cidr.contains_prefix(e) && e.contains(ip)))
                .then_some((p, ip)),
            }
        })
    }

    /// The address rules of an identity, per direction (`None`: not isolated).
    fn expand(
        &self,
        ns: &str,
        labels: &Labels,
        own_ports: &[NamedPort],
    ) -> (Option<Vec<PeerRule>>, Option<Vec<PeerRule>>) {
        let mut ingress: Option<Vec<PeerRule>> = None;
        let mut egress: Option<Vec<PeerRule>> = None;
        for p in self.policies_in(ns) {
            if !p.selector.matches(labels) {
                continue;
            }
            if let Some(rules) = &p.ingress {
                let out = ingress.get_or_insert_with(Vec::new);
                for r in rules {
                    self.expand_ingress(r, own_ports, out);
                }
            }
            if let Some(rules) = &p.egress {
                let out = egress.get_or_insert_with(Vec::new);
                for r in rules {
                    self.expand_egress(r, out);
                }
            }
        }
        (ingress, egress)
    }

    /// Ingress: ports (named ones too) are the endpoint's own.
    fn expand_ingress(&self, r: &Rule, own_ports: &[NamedPort], out: &mut Vec<PeerRule>) {
        let ports = match &r.ports {
            None => PortSet::all(),
            Some(list) => list.iter().fold(PortSet::none(), |acc, p| {
                acc.union(&p.resolve(Some(own_ports)))
            }),
        };
        if ports.is_empty() {
            return;
        }
        let Some(peers) = &r.peers else {
            out.push(rule(everywhere(), vec![], ports));
            return;
        };
        for peer in peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    for (_, _, ip) in self.peer_pods(namespaces, pods) {
                        out.push(rule(Prefix::host(ip), vec![], ports.clone()));
                    }
                }
                Peer::Block { cidr, except } => {
                    out.push(rule(*cidr, except.clone(), ports.clone()))
                }
                Peer::Nothing => {}
            }
        }
    }

    /// Egress: named ports are resolved per destination pod.
    fn expand_egress(&self, r: &Rule, out: &mut Vec<PeerRule>) {
        let (fixed, named): (PortSet, Vec<&Port>) = match &r.ports {
            None => (PortSet::all(), Vec::new()),
            Some(list) => (
                list.iter()
                    .filter(|p| !p.is_named())
                    .fold(PortSet::none(), |acc, p| acc.union(&p.resolve(None))),
                list.iter().filter(|p| p.is_named()).collect(),
            ),
        };
        let resolve = |pod: &PodInfo| {
            named.iter().fold(PortSet::none(), |acc, p| {
                acc.union(&p.resolve(Some(&pod.ports)))
            })
        };
        let all = everywhere();
        let block_rules = |out: &mut Vec<PeerRule>, block: Option<(&Prefix, &[Prefix])>| {
            let (cidr, except) = block.unwrap_or((&all, &[]));
            if !fixed.is_empty() {
                out.push(rule(*cidr, except.to_vec(), fixed.clone()));
            }
            if !named.is_empty() {
                for (pod, ip) in self.pods_in(block) {
                    let ports = resolve(pod);
                    if !ports.is_empty() {
                        out.push(rule(Prefix::host(ip), vec![], ports));
                    }
                }
            }
        };
        let Some(peers) = &r.peers else {
            block_rules(out, None);
            return;
        };
        for peer in peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    for (_, pod, ip) in self.peer_pods(namespaces, pods) {
                        let ports = if named.is_empty() {
                            fixed.clone()
                        } else {
                            fixed.union(&resolve(pod))
                        };
                        if !ports.is_empty() {
                            out.push(rule(Prefix::host(ip), vec![], ports));
                        }
                    }
                }
                Peer::Block { cidr, except } => block_rules(out, Some((cidr, except))),
                Peer::Nothing => {}
            }
        }
    }
}

/// `0.0.0.0/0`.
fn everywhere() -> Prefix {
    // A zero length never fails; the fallback only avoids a panic path.
    Prefix::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or(Prefix::host(Ipv4Addr::UNSPECIFIED))
}

fn rule(cidr: Prefix, except: Vec<Prefix>, ports: PortSet) -> PeerRule {
    PeerRule {
        cidr,
        except,
        ports,
    }
}

/// Every rule of a policy, both directions.
fn rules(p: &Policy) -> impl Iterator<Item = &Rule> {
    p.ingress.iter().flatten().chain(p.egress.iter().flatten())
}

/// Whether a policy's expansion may change when the pod `(ns, labels, ip)`
/// comes, goes or changes: a pod peer matches it, or an egress rule with
/// named ports covers its address.
fn depends_on_pod(
    p: &Policy,
    ns: &str,
    ns_labels: &Labels,
    labels: &Labels,
    ip: Option<Ipv4Addr>,
) -> bool {
    let pod_peer = rules(p).any(|r| {
        r.peers.iter().flatten().any(|peer| match peer {
            Peer::Pods { namespaces, pods } => {
                namespaces.matches(ns, ns_labels) && pods.matches(labels)
            }
            _ => false,
        })
    });
    if pod_peer {
        return true;
    }
    let Some(ip) = ip else { return false };
    p.egress.iter().flatten().any(|r| {
        r.ports.iter().flatten().any(Port::is_named)
            && match &r.peers {
                None => true,
                Some(peers) => peers.iter().any(|peer| match peer {
                    Peer::Block { cidr, .. } => cidr.contains(ip),
                    _ => false,
                }),
            }
    })
}
