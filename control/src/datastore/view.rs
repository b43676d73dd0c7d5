//! What a node knows of the cluster in etcd: other nodes, their endpoints, objects and block
//! owners, kept so that watch events and full re-reads (after a lost watch) turn into the
//! smallest set of [`ClusterChange`]s for the agent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use sluice_dataplane::table::Prefix;

use super::keys::{self, EndpointRecord, Key, NodeRecord};
use super::ClusterChange;
use crate::daemon::agent::Peer;
use crate::k8s::{Kind, ObjectKey};

/// The cluster as last handed to the agent. This node's own keys are left out (except block
/// owners, which the grace-period collection reads).
#[derive(Debug, Default)]
pub struct View {
    me: String,
    nodes: BTreeMap<String, NodeRecord>,
    /// Endpoint key → (namespace, name, address).
    eps: BTreeMap<String, (String, String, Ipv4Addr)>,
    /// Object key → document.
    objects: BTreeMap<String, String>,
    owners: BTreeMap<Prefix, String>,
}

impl View {
    /// An empty view for node `me`.
    pub fn new(me: &str) -> View {
        View {
            me: me.to_owned(),
            ..View::default()
        }
    }

    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    /// Block owners, by block.
    pub fn owners(&self) -> &BTreeMap<Prefix, String> {
        &self.owners
    }

    /// (nodes, endpoints, objects) known.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.nodes.len(), self.eps.len(), self.objects.len())
    }

    /// Replaces the view with the keys of a full range and returns what changed since.
    pub fn resync<'a>(
        &mut self,
        kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Vec<ClusterChange> {
        let old = std::mem::replace(self, View::new(&self.me));
        let mut ignored = Vec::new();
        for (k, v) in kvs {
            let _ = self.event(k, Some(v), &mut ignored);
        }
        let mut changes = Vec::new();
        for (name, rec) in &self.nodes {
            if old.nodes.get(name) != Some(rec) {
                changes.extend(peer(rec));
            }
        }
        for name in old.nodes.keys().filter(|n| !self.nodes.contains_key(*n)) {
            changes.push(ClusterChange::PeerGone(name.clone()));
        }
        for (k, (ns, name, ip)) in &self.eps {
            if old.eps.get(k) != Some(&(ns.clone(), name.clone(), *ip)) {
                changes.push(ClusterChange::Endpoint {
                    namespace: ns.clone(),
                    name: name.clone(),
                    ip: Some(*ip),
                });
            }
        }
        for (k, (ns, name, _)) in &old.eps {
            if !self.eps.contains_key(k) {
                changes.push(ClusterChange::Endpoint {
                    namespace: ns.clone(),
                    name: name.clone(),
                    ip: None,
                });
            }
        }
        for (k, doc) in &self.objects {
            if old.objects.get(k) != Some(doc) {
                changes.push(ClusterChange::Object(doc.clone()));
            }
        }
        for k in old
            .objects
            .keys()
            .filter(|k| !self.objects.contains_key(*k))
        {
            changes.extend(object_gone(k));
        }
        changes
    }

    /// Applies one put (`value` set) or delete, pushing the agent's changes. True when this
    /// node's own record was deleted (it must register again).
    pub fn event(&mut self, key: &str, value: Option<&[u8]>, out: &mut Vec<ClusterChange>) -> bool {
        let k = match Key::parse(key) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "key skipped");
                return false;
            }
        };
        match (k, value) {
            (Key::Node(n), None) if n == self.me => return true,
            (Key::Node(n), _) if n == self.me => {}
            (Key::Node(n), Some(v)) => match keys::decode::<NodeRecord>(key, v) {
                Ok(rec) if rec.name == n => {
                    if self.nodes.get(&n) != Some(&rec) {
                        out.extend(peer(&rec));
                        self.nodes.insert(n, rec);
                    }
                }
                Ok(rec) => {
                    tracing::warn!(key, name = %rec.name, "node record under another name skipped")
                }
                Err(e) => tracing::warn!(error = %e, "node record skipped"),
            },
            (Key::Node(n), None) => {
                if self.nodes.remove(&n).is_some() {
                    out.push(ClusterChange::PeerGone(n));
                }
            }
            (Key::Block(b), Some(v)) => {
                self.owners
                    .insert(b, String::from_utf8_lossy(v).into_owned());
            }
            (Key::Block(b), None) => {
                self.owners.remove(&b);
            }
            (Key::Endpoint { node, .. }, _) if node == self.me => {}
            (
                Key::Endpoint {
                    namespace, name, ..
                },
                Some(v),
            ) => match keys::decode::<EndpointRecord>(key, v) {
                Ok(rec) => {
                    let entry = (namespace.clone(), name.clone(), rec.ip);
                    if self.eps.get(key) != Some(&entry) {
                        self.eps.insert(key.to_owned(), entry);
                        out.push(ClusterChange::Endpoint {
                            namespace,
                            name,
                            ip: Some(rec.ip),
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "endpoint record skipped"),
            },
            (
                Key::Endpoint {
                    namespace, name, ..
                },
                None,
            ) => {
                if self.eps.remove(key).is_some() {
                    out.push(ClusterChange::Endpoint {
                        namespace,
                        name,
                        ip: None,
                    });
                }
            }
            (Key::Object { .. }, Some(v)) => {
                let doc = String::from_utf8_lossy(v).into_owned();
                if self.objects.get(key) != Some(&doc) {
                    self.objects.insert(key.to_owned(), doc.clone());
                    out.push(ClusterChange::Object(doc));
                }
            }
            (Key::Object { .. }, None) => {
                if self.objects.remove(key).is_some() {
                    out.extend(object_gone(key));
                }
            }
        }
        false
    }
}

/// The peer a node record describes; `None` (logged) when the record is unusable.
fn peer(rec: &NodeRecord) -> Option<ClusterChange> {
    match rec.parse_parts() {
        Ok((vtep_mac, mode, blocks)) => Some(ClusterChange::Peer(Peer {
            name: rec.name.clone(),
            node_ip: rec.node_ip,
            pod_cidr: blocks[0],
            more_cidrs: blocks[1..].to_vec(),
            vtep_mac,
            mode,
            source: "etcd",
        })),
        Err(e) => {
            tracing::warn!(node = %rec.name, error = %e, "node record skipped");
            None
        }
    }
}

/// The agent's change for a deleted object key.
fn object_gone(key: &str) -> Option<ClusterChange> {
    match Key::parse(key).ok()? {
        Key::Object {
            kind,
            namespace,
            name,
        } => Some(ClusterChange::ObjectGone(ObjectKey {
            kind: Kind::from_name(&kind)?,
            namespace,
            name,
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use sluice_dataplane::table::{default_vtep_mac, Mode};

    use super::*;

    fn node(name: &str, last: u8, blocks: &[&str]) -> (String, Vec<u8>) {
        let ip = Ipv4Addr::new(198, 18, 0, last);
        let blocks: Vec<Prefix> = blocks.iter().map(|b| b.parse().unwrap()).collect();
        let rec = NodeRecord::new(name, ip, default_vtep_mac(ip), Mode::Vxlan, &blocks);
        (
            Key::Node(name.into()).path(),
            serde_json::to_vec(&rec).unwrap(),
        )
    }

    fn ep(node: &str, name: &str, ip: [u8; 4]) -> (String, Vec<u8>) {
        let rec = EndpointRecord {
            ip: ip.into(),
            namespace: "default".into(),
            name: name.into(),
            node: node.into(),
            labels: Default::default(),
        };
        let key = Key::Endpoint {
            node: node.into(),
            namespace: "default".into(),
            name: name.into(),
        };
        (key.path(), serde_json::to_vec(&rec).unwrap())
    }

    fn kvs(v: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect()
    }

    #[test]
    fn events_skip_this_node_and_repeat_nothing() {
        let mut v = View::new("n1");
        let mut out = Vec::new();
        let (k1, r1) = node("n1", 1, &["198.19.0.0/26"]);
        let (k2, r2) = node("n2", 2, &["198.19.0.64/26", "198.19.1.0/26"]);
        assert!(!v.event(&k1, Some(&r1), &mut out));
        assert!(out.is_empty(), "own record: {out:?}");
        v.event(&k2, Some(&r2), &mut out);
        v.event(&k2, Some(&r2), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let ClusterChange::Peer(p) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(p.pod_cidr.to_string(), "198.19.0.64/26");
        assert_eq!(p.more_cidrs.len(), 1);
        out.clear();
        let (ke, re) = ep("n1", "mine", [198, 19, 0, 5]);
        v.event(&ke, Some(&re), &mut out);
        assert!(out.is_empty(), "own endpoint: {out:?}");
        v.event(&k2, None, &mut out);
        assert_eq!(out, vec![ClusterChange::PeerGone("n2".into())]);
        assert!(v.event(&k1, None, &mut out), "own record deleted");
        out.clear();
        v.event("/sluice/v1/what/x", Some(b"{}"), &mut out);
        v.event(&k2, Some(b"not json"), &mut out);
        assert!(out.is_empty(), "bad keys and values are skipped: {out:?}");
    }

    #[test]
    fn resync_hands_over_only_the_differences() {
        let mut v = View::new("n1");
        let a = node("n2", 2, &["198.19.0.64/26"]);
        let b = node("n3", 3, &["198.19.0.128/26"]);
        let e1 = ep("n2", "p1", [198, 19, 0, 65]);
        let e2 = ep("n3", "p2", [198, 19, 0, 129]);
        let first = v.resync(kvs(&[a.clone(), b.clone(), e1.clone(), e2.clone()]));
        assert_eq!(first.len(), 4, "{first:?}");
        // The watch was lost: n3 left, p1 moved, an object appeared.
        let e1b = ep("n2", "p1", [198, 19, 0, 66]);
        let obj = (
            Key::Object {
                kind: "Namespace".into(),
                namespace: None,
                name: "prod".into(),
            }
            .path(),
            br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"prod"}}"#.to_vec(),
        );
        let second = v.resync(kvs(&[a.clone(), e1b, obj.clone()]));
        assert!(
            second.contains(&ClusterChange::PeerGone("n3".into())),
            "{second:?}"
        );
        assert!(second.contains(&ClusterChange::Endpoint {
            namespace: "default".into(),
            name: "p1".into(),
            ip: Some(Ipv4Addr::new(198, 19, 0, 66)),
        }));
        assert!(second.contains(&ClusterChange::Endpoint {
            namespace: "default".into(),
            name: "p2".into(),
            ip: None,
        }));
        assert!(second
            .iter()
            .any(|c| matches!(c, ClusterChange::Object(d) if d.contains("prod"))));
        assert_eq!(second.len(), 4, "n2 unchanged is not repeated: {second:?}");
        let third = v.resync(kvs(&[a]));
        assert!(third.iter().any(|c| matches!(c,
            ClusterChange::ObjectGone(k) if k.kind == Kind::Namespace && k.name == "prod")));
        assert_eq!(v.counts(), (1, 0, 0));
    }
}
