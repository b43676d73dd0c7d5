//! The cluster's objects as this node currently knows them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{Kind, Object, ObjectKey};

/// What [`ClusterObjects::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    /// The same object was already there: nothing to recompute.
    Unchanged,
}

/// Objects keyed by [`ObjectKey`], in key order (kind, namespace, name).
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    objects: BTreeMap<ObjectKey, Object>,
}

impl ClusterObjects {
    pub fn new() -> ClusterObjects {
        ClusterObjects::default()
    }

    /// Inserts or replaces the object with the same key.
    pub fn apply(&mut self, obj: Object) -> Change {
        match self.objects.entry(obj.key()) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(obj);
                Change::Created
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if *e.get() == obj {
                    Change::Unchanged
                } else {
                    e.insert(obj);
                    Change::Updated
                }
            }
        }
    }

    /// Removes an object; false if there was none.
    pub fn delete(&mut self, key: &ObjectKey) -> bool {
        self.objects.remove(key).is_some()
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    /// The objects of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        // The smallest key of a kind: no namespace sorts before any, "" before any name.
        let first = ObjectKey {
            kind,
            namespace: None,
            name: String::new(),
        };
        self.objects
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, o)| o)
    }

    /// The objects of a namespaced kind in one namespace, by name.
    pub fn in_namespace<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Object> + 'a {
        let first = ObjectKey {
            kind,
            namespace: Some(namespace.to_owned()),
            name: String::new(),
        };
        self.objects
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind && k.namespace.as_deref() == Some(namespace))
            .map(|(_, o)| o)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.of_kind(Kind::Node).filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.of_kind(Kind::Namespace).filter_map(|o| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        })
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.of_kind(Kind::Pod).filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
    }

    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.of_kind(Kind::NetworkPolicy).filter_map(|o| match o {
            Object::NetworkPolicy(p) => Some(p),
            _ => None,
        })
    }

    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.in_namespace(Kind::Pod, namespace)
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
    }

    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.in_namespace(Kind::NetworkPolicy, namespace)
            .filter_map(|o| match o {
                Object::NetworkPolicy(p) => Some(p),
                _ => None,
            })
    }
}

impl Extend<Object> for ClusterObjects {
    fn extend<I: IntoIterator<Item = Object>>(&mut self, iter: I) {
        for o in iter {
            self.apply(o);
        }
    }
}

impl FromIterator<Object> for ClusterObjects {
    fn from_iter<I: IntoIterator<Item = Object>>(iter: I) -> ClusterObjects {
        let mut c = ClusterObjects::new();
        c.extend(iter);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_documents;
    use super::*;

    const ALL: [&str; 4] = [
        include_str!("../../../fixtures/k8s/nodes.yaml"),
        include_str!("../../../fixtures/k8s/namespaces.yaml"),
        include_str!("../../../fixtures/k8s/pods.yaml"),
        include_str!("../../../fixtures/k8s/netpol-allow-from-namespace.yaml"),
    ];

    fn fixtures() -> ClusterObjects {
        ALL.iter()
            .flat_map(|t| parse_documents(t).unwrap())
            .collect()
    }

    fn names<'a>(
        it: impl Iterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    ) -> Vec<String> {
        it.map(|m| m.name.clone().unwrap_or_default()).collect()
    }

    #[test]
    fn per_kind_views() {
        let c = fixtures();
        assert_eq!(c.len(), 11);
        assert_eq!(names(c.nodes().map(|n| &n.metadata)), ["node-1", "node-2"]);
        assert_eq!(names(c.namespaces().map(|n| &n.metadata)), ["x", "y", "z"]);
        assert_eq!(c.pods().count(), 4);
        assert_eq!(names(c.pods_in("x").map(|p| &p.metadata)), ["a", "pending"]);
        assert_eq!(names(c.pods_in("y").map(|p| &p.metadata)), ["b"]);
        assert_eq!(c.pods_in("w").count(), 0);
        assert_eq!(c.policies().count(), 2);
        assert_eq!(c.policies_in("x").count(), 2);
        assert_eq!(c.of_kind(Kind::Namespace).count(), 3);
        assert!(c.get(&ObjectKey::pod("y", "b")).is_some());
        assert!(c.get(&ObjectKey::pod("x", "b")).is_none());
    }

    #[test]
    fn apply_and_delete() {
        let mut c = ClusterObjects::new();
        let ns = |labels: &str| {
            parse_documents(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{{labels}}}}}\n"
            ))
            .unwrap()
            .remove(0)
        };
        assert_eq!(c.apply(ns("a: b")), Change::Created);
        assert_eq!(c.apply(ns("a: b")), Change::Unchanged);
        assert_eq!(c.apply(ns("a: c")), Change::Updated);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.namespaces()
                .next()
                .unwrap()
                .metadata
                .labels
                .as_ref()
                .unwrap()["a"],
            "c"
        );
        // Same name, other kind: a different object.
        let pod = parse_documents("apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: x}\n")
            .unwrap()
            .remove(0);
        assert_eq!(c.apply(pod), Change::Created);
        assert_eq!(c.len(), 2);
        assert!(c.delete(&ObjectKey::namespace("x")));
        assert!(!c.delete(&ObjectKey::namespace("x")));
        assert!(!c.delete(&ObjectKey::pod("default", "x")));
        assert!(c.delete(&ObjectKey::pod("x", "x")));
        assert!(c.is_empty());
    }
}
