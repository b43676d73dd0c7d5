//! AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1): cluster-scoped
//! policies set by the cluster's administrators, evaluated before
//! NetworkPolicy.
//!
//! For a pod its subject selects, the rules of every AdminNetworkPolicy are
//! taken in priority order (lower `priority` first; equal priorities by
//! name, where the API leaves the order undefined), each policy's rules in
//! their written order. The first rule whose peers and ports match decides:
//! `Allow` and `Deny` are final, NetworkPolicy is not consulted; `Pass` hands
//! the flow to NetworkPolicy, skipping the remaining admin rules. A flow no
//! admin rule matches is decided by NetworkPolicy as usual.
//!
//! The compiler turns the rules into the same peer rules as NetworkPolicy,
//! with a rank and an action ([`TieredRule`]); the dataplane folds the tiers
//! into its per-interval classes, so a packet's cost does not change.
//!
//! Supported peers: `namespaces` and `pods` (both directions) and `networks`
//! (egress). `nodes` peers are refused with a clear error (Sluice has no view
//! of node labels in this mode). The types below are Sluice's own: the
//! Kubernetes crate has no AdminNetworkPolicy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use sluice_dataplane::policy::{Action, Protocol};

use super::model::{Namespaces, Peer, Port, Rule};
use super::selector::Selector;

pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha1";
pub const KIND: &str = "AdminNetworkPolicy";
/// The highest priority value the API accepts.
pub const MAX_PRIORITY: i32 = 1000;

/// The object as written (camelCase, unknown fields refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminNetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub metadata: ObjectMeta,
    pub spec: AnpSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpSpec {
    pub priority: i32,
    pub subject: AnpSubject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<AnpRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<AnpRule>,
}

/// Exactly one of `namespaces` or `pods`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPod {
    pub namespace_selector: LabelSelector,
    pub pod_selector: LabelSelector,
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<AnpPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<AnpPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<AnpPort>>,
}

/// Exactly one of its fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
}

/// Exactly one of its fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<AnpPortNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<AnpPortRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpPortNumber {
    pub protocol: String,
    pub port: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnpPortRange {
    pub protocol: String,
    pub start: i64,
    pub end: i64,
}

/// What is wrong with an AdminNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("AdminNetworkPolicy without metadata.name")]
    MissingName,
    #[error("AdminNetworkPolicy {name}: priority {value}: expected 0 to 1000")]
    Priority { name: String, value: i32 },
    #[error("AdminNetworkPolicy {name}: {at}: expected exactly one of {expected}")]
    OneOf {
        name: String,
        at: String,
        expected: &'static str,
    },
    #[error("AdminNetworkPolicy {name}: {at}: action {value:?}: expected Allow, Deny or Pass")]
    Action {
        name: String,
        at: String,
        value: String,
    },
    #[error("AdminNetworkPolicy {name}: {at}: {message}")]
    Invalid {
        name: String,
        at: String,
        message: String,
    },
}

/// A parsed AdminNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPolicy {
    pub name: String,
    pub priority: u32,
    /// The subject: pods matching `pods` in namespaces matching `namespaces`.
    pub namespaces: Selector,
    pub pods: Selector,
    pub ingress: Vec<AdminRule>,
    pub egress: Vec<AdminRule>,
}

/// One rule: its action, and its peers and ports in NetworkPolicy's model
/// (so the compiler expands both the same way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRule {
    pub name: Option<String>,
    pub action: Action,
    pub rule: Rule,
}

impl AdminPolicy {
    /// Whether the subject selects a pod with `labels` in a namespace with
    /// `ns_labels`.
    pub fn selects(&self, ns_labels: &super::Labels, labels: &super::Labels) -> bool {
        self.namespaces.matches(ns_labels) && self.pods.matches(labels)
    }
}

/// Reads an AdminNetworkPolicy, checking what the API server would.
pub fn parse_admin(anp: &AdminNetworkPolicy) -> Result<AdminPolicy, AdminError> {
    let name = anp
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(AdminError::MissingName)?;
    let s = &anp.spec;
    if !(0..=MAX_PRIORITY).contains(&s.priority) {
        return Err(AdminError::Priority {
            name,
            value: s.priority,
        });
    }
    let invalid = |at: String, message: String| AdminError::Invalid {
        name: name.clone(),
        at,
        message,
    };
    let selector = |at: &str, sel: &LabelSelector| {
        Selector::parse(sel).map_err(|e| invalid(at.to_owned(), e.to_string()))
    };
    let (namespaces, pods) = match (&s.subject.namespaces, &s.subject.pods) {
        (Some(ns), None) => (
            selector("spec.subject.namespaces", ns)?,
            Selector::everything(),
        ),
        (None, Some(p)) => (
            selector("spec.subject.pods.namespaceSelector", &p.namespace_selector)?,
            selector("spec.subject.pods.podSelector", &p.pod_selector)?,
        ),
        _ => {
            return Err(AdminError::OneOf {
                name,
                at: "spec.subject".into(),
                expected: "namespaces or pods",
            })
        }
    };
    let mut out = AdminPolicy {
        name: name.clone(),
        priority: s.priority as u32,
        namespaces,
        pods,
        ingress: Vec::new(),
        egress: Vec::new(),
    };
    for (dir, rules) in [("ingress", &s.ingress), ("egress", &s.egress)] {
        if rules.len() > 100 {
            return Err(invalid(
                format!("spec.{dir}"),
                format!("{} rules: expected at most 100", rules.len()),
            ));
        }
        for (i, r) in rules.iter().enumerate() {
            let at = format!("spec.{dir}[{i}]");
            let rule = parse_rule(&name, &at, dir == "egress", r)?;
            if dir == "egress" {
                out.egress.push(rule);
            } else {
                out.ingress.push(rule);
            }
        }
    }
    Ok(out)
}

fn parse_rule(name: &str, at: &str, egress: bool, r: &AnpRule) -> Result<AdminRule, AdminError> {
    let invalid = |at: String, message: String| AdminError::Invalid {
        name: name.to_owned(),
        at,
        message,
    };
    let action = match r.action.as_str() {
        "Allow" => Action::Allow,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        other => {
            return Err(AdminError::Action {
                name: name.to_owned(),
                at: format!("{at}.action"),
                value: other.to_owned(),
            })
        }
    };
    let (field, peers) = match (egress, &r.from, &r.to) {
        (false, Some(p), None) => ("from", p),
        (true, None, Some(p)) => ("to", p),
        _ => {
            return Err(invalid(
                at.to_owned(),
                format!(
                    "expected `{}` (and not `{}`)",
                    if egress { "to" } else { "from" },
                    if egress { "from" } else { "to" }
                ),
            ))
        }
    };
    if peers.is_empty() || peers.len() > 100 {
        return Err(invalid(
            format!("{at}.{field}"),
            format!("{} peers: expected 1 to 100", peers.len()),
        ));
    }
    let mut out = Vec::with_capacity(peers.len());
    for (j, p) in peers.iter().enumerate() {
        let pat = format!("{at}.{field}[{j}]");
        let sel = |what: &str, s: &LabelSelector| {
            Selector::parse(s).map_err(|e| invalid(format!("{pat}.{what}"), e.to_string()))
        };
        let set = [
            p.namespaces.is_some(),
            p.pods.is_some(),
            p.networks.is_some(),
            p.nodes.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(AdminError::OneOf {
                name: name.to_owned(),
                at: pat,
                expected: "namespaces, pods, networks or nodes",
            });
        }
        if let Some(ns) = &p.namespaces {
            out.push(Peer::Pods {
                namespaces: Namespaces::Matching(sel("namespaces", ns)?),
                pods: Selector::everything(),
            });
        } else if let Some(np) = &p.pods {
            out.push(Peer::Pods {
                namespaces: Namespaces::Matching(sel(
                    "pods.namespaceSelector",
                    &np.namespace_selector,
                )?),
                pods: sel("pods.podSelector", &np.pod_selector)?,
            });
        } else if let Some(nets) = &p.networks {
            if !egress {
                return Err(invalid(
                    pat,
                    "networks peers are for egress rules only".into(),
                ));
            }
            for (k, n) in nets.iter().enumerate() {
                match n.parse::<sluice_dataplane::table::Prefix>() {
                    Ok(cidr) => out.push(Peer::Block {
                        cidr,
                        except: Vec::new(),
                    }),
                    // An IPv6 network matches no IPv4 address.
                    Err(_) if n.contains(':') => out.push(Peer::Nothing),
                    Err(_) => {
                        return Err(invalid(
                            format!("{pat}.networks[{k}]"),
                            format!("{n:?}: expected a CIDR such as 198.51.100.0/24"),
                        ))
                    }
                }
            }
        } else {
            return Err(invalid(
                format!("{pat}.nodes"),
                "nodes peers are not supported by Sluice".into(),
            ));
        }
    }
    let ports = match &r.ports {
        None => None,
        Some(list) => {
            let mut v = Vec::new();
            for (j, p) in list.iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                let proto = |s: &str| {
                    s.parse::<Protocol>().map_err(|_| {
                        invalid(
                            pat.clone(),
                            format!("protocol {s:?}: expected TCP, UDP or SCTP"),
                        )
                    })
                };
                let port = |what: &str, n: i64| {
                    u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                        invalid(format!("{pat}.{what}"), format!("{n}: expected 1 to 65535"))
                    })
                };
                match (&p.port_number, &p.named_port, &p.port_range) {
                    (Some(n), None, None) => {
                        let x = port("portNumber.port", n.port)?;
                        v.push(Port::Range {
                            protocol: proto(&n.protocol)?,
                            start: x,
                            end: x,
                        });
                    }
                    (None, Some(name), None) => {
                        // A named port carries its protocol in the pod spec.
                        for protocol in Protocol::ALL {
                            v.push(Port::Named {
                                protocol,
                                name: name.clone(),
                            });
                        }
                    }
                    (None, None, Some(r)) => {
                        let (start, end) = (
                            port("portRange.start", r.start)?,
                            port("portRange.end", r.end)?,
                        );
                        if start > end {
                            return Err(invalid(
                                format!("{pat}.portRange"),
                                format!("start {start} > end {end}"),
                            ));
                        }
                        v.push(Port::Range {
                            protocol: proto(&r.protocol)?,
                            start,
                            end,
                        });
                    }
                    _ => {
                        return Err(AdminError::OneOf {
                            name: name.to_owned(),
                            at: pat,
                            expected: "portNumber, namedPort or portRange",
                        })
                    }
                }
            }
            Some(v)
        }
    };
    Ok(AdminRule {
        name: r.name.clone(),
        action,
        rule: Rule {
            peers: Some(out),
            ports,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<AdminPolicy, AdminError> {
        let anp: AdminNetworkPolicy = serde_json::from_value(v).expect("shape");
        parse_admin(&anp)
    }

    #[test]
    fn parses_and_refuses_what_the_api_refuses() {
        let ok = parse(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"priority": 5, "subject": {"namespaces": {}},
                     "ingress": [{"name": "r", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}],
                                  "ports": [{"portNumber": {"protocol": "TCP", "port": 80}}, {"namedPort": "web"},
                                            {"portRange": {"protocol": "UDP", "start": 1, "end": 9}}]}],
                     "egress": [{"action": "Pass", "to": [{"networks": ["198.19.0.0/16", "2001:db8::/32"]}]}]}
        }))
        .unwrap();
        assert_eq!(ok.priority, 5);
        assert_eq!(ok.ingress[0].action, Action::Deny);
        assert_eq!(ok.ingress[0].rule.ports.as_ref().unwrap().len(), 1 + 3 + 1);
        assert_eq!(ok.egress[0].rule.peers.as_ref().unwrap().len(), 2);

        let base =
            |spec: serde_json::Value| serde_json::json!({"metadata": {"name": "b"}, "spec": spec});
        let cases = [
            (
                serde_json::json!({"priority": 1001, "subject": {"namespaces": {}}}),
                "priority 1001",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {}}),
                "spec.subject: expected exactly one of namespaces or pods",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": "Maybe", "from": [{"namespaces": {}}]}]}),
                "action \"Maybe\"",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": "Allow", "to": [{"namespaces": {}}]}]}),
                "expected `from`",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "ingress": [{"action": "Allow", "from": [{"networks": ["10.0.0.0/8"]}]}]}),
                "egress rules only",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "egress": [{"action": "Allow", "to": [{"nodes": {}}]}]}),
                "not supported",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "egress": [{"action": "Allow", "to": [{"networks": ["10.0.0.0/33"]}]}]}),
                "networks[0]",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "egress": [{"action": "Allow", "to": [{"namespaces": {}}], "ports": [{"portNumber": {"protocol": "TCP", "port": 0}}]}]}),
                "expected 1 to 65535",
            ),
            (
                serde_json::json!({"priority": 1, "subject": {"namespaces": {}},
                "egress": [{"action": "Allow", "to": [{"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}]}]}),
                "exactly one of",
            ),
        ];
        for (spec, want) in cases {
            let e = parse(base(spec.clone())).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.starts_with("AdminNetworkPolicy b"), "{e}");
        }
    }
}
