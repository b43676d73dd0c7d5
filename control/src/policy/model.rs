//! The compiler's model of the Kubernetes objects it reads: pods, namespaces
//! and NetworkPolicies parsed once into plain types, with the semantics the
//! Kubernetes documentation gives them (defaults applied, policy types
//! inferred, peers and ports validated).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use sluice_dataplane::policy::{PortRange, PortSet, Protocol};
use sluice_dataplane::table::Prefix;

use super::selector::{Labels, Selector, SelectorError};

/// The label every namespace carries with its own name (set by the API
/// server since Kubernetes 1.22; added here for objects that lack it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

macro_rules! object_key {
    ($(#[$m:meta])* $name:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name {
            pub namespace: String,
            pub name: String,
        }

        impl $name {
            pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> $name {
                $name {
                    namespace: namespace.into(),
                    name: name.into(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}/{}", self.namespace, self.name)
            }
        }

        impl std::str::FromStr for $name {
            type Err = PolicyError;
            /// `namespace/name`.
            fn from_str(s: &str) -> Result<$name, PolicyError> {
                match s.split_once('/') {
                    Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {
                        Ok($name::new(ns, n))
                    }
                    _ => Err(PolicyError::BadKey {
                        kind: $what,
                        value: s.to_owned(),
                    }),
                }
            }
        }
    };
}

object_key!(
    /// A pod, by namespace and name.
    PodKey,
    "pod"
);
object_key!(
    /// A NetworkPolicy, by namespace and name.
    PolicyKey,
    "NetworkPolicy"
);

/// An object the compiler cannot take (Kubernetes' validation refuses all of
/// these, so they come only from a bug or a hand-made object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{kind} without metadata.name")]
    MissingName { kind: &'static str },
    #[error("{kind} {name:?} without metadata.namespace")]
    MissingNamespace { kind: &'static str, name: String },
    #[error("{kind} key {value:?}: expected namespace/name")]
    BadKey { kind: &'static str, value: String },
    #[error("NetworkPolicy {policy}: {source}")]
    Selector {
        policy: PolicyKey,
        #[source]
        source: SelectorError,
    },
    #[error("NetworkPolicy {policy}: policyType {value:?}: expected Ingress or Egress")]
    PolicyType { policy: PolicyKey, value: String },
    #[error("NetworkPolicy {policy}: ipBlock {value:?}: expected an IPv4 or IPv6 CIDR")]
    Cidr { policy: PolicyKey, value: String },
    #[error("NetworkPolicy {policy}: protocol {value:?}: expected TCP, UDP or SCTP")]
    Protocol { policy: PolicyKey, value: String },
    #[error("NetworkPolicy {policy}: port {value}: expected 1 to 65535")]
    Port { policy: PolicyKey, value: i64 },
    #[error("NetworkPolicy {policy}: endPort {end_port} with port {port}: expected port <= endPort <= 65535")]
    EndPort {
        policy: PolicyKey,
        port: i64,
        end_port: i64,
    },
    #[error("NetworkPolicy {policy}: endPort {end_port} with {port}: expected a numeric port")]
    EndPortNeedsNumber {
        policy: PolicyKey,
        port: String,
        end_port: i64,
    },
    #[error("NetworkPolicy {policy}: a peer must set podSelector and/or namespaceSelector, or ipBlock alone")]
    Peer { policy: PolicyKey },
    #[error(transparent)]
    Admin(#[from] super::admin::AdminError),
}

/// A pod as the compiler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: Labels,
    /// `status.podIP` (or the first IPv4 of `status.podIPs`).
    pub status_ip: Option<Ipv4Addr>,
    pub uid: Option<String>,
    /// Named container ports, sorted.
    pub ports: Vec<NamedPort>,
    /// False for pods that hold no address of their own: finished
    /// (Succeeded/Failed) or on the host network (their address is the
    /// node's; Kubernetes leaves their policy undefined).
    pub active: bool,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// Reads a pod.
pub fn pod_info(pod: &Pod) -> Result<(PodKey, PodInfo), PolicyError> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or(PolicyError::MissingName { kind: "Pod" })?;
    let namespace =
        pod.metadata
            .namespace
            .clone()
            .ok_or_else(|| PolicyError::MissingNamespace {
                kind: "Pod",
                name: name.clone(),
            })?;
    let status = pod.status.as_ref();
    let status_ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .or_else(|| {
            status
                .and_then(|s| s.pod_ips.as_ref())
                .and_then(|ips| ips.iter().find_map(|i| i.ip.parse::<Ipv4Addr>().ok()))
        });
    let finished = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut ports: Vec<NamedPort> = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = p.protocol.as_deref().unwrap_or("TCP").parse().ok()?;
            let port = u16::try_from(p.container_port).ok().filter(|&p| p != 0)?;
            Some(NamedPort {
                name,
                protocol,
                port,
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    Ok((
        PodKey { namespace, name },
        PodInfo {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            status_ip,
            uid: pod.metadata.uid.clone(),
            ports,
            active: !finished && !host_network,
        },
    ))
}

/// Reads a namespace: its name and labels (with the name label).
pub fn namespace_info(ns: &Namespace) -> Result<(String, Labels), PolicyError> {
    let name = ns
        .metadata
        .name
        .clone()
        .ok_or(PolicyError::MissingName { kind: "Namespace" })?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
    Ok((name, labels))
}

/// The labels of a namespace the compiler has no object for.
pub fn default_namespace_labels(name: &str) -> Labels {
    BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())])
}

/// A parsed NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub key: PolicyKey,
    pub selector: Selector,
    /// `Some` when the policy isolates the selected pods for ingress (rules
    /// may be empty: nothing allowed by this policy).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer (an empty or missing `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol (an empty or missing `ports`).
    pub ports: Option<Vec<Port>>,
}

/// One entry of `from` / `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces `namespaces` selects.
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    Block {
        cidr: Prefix,
        except: Vec<Prefix>,
    },
    /// An IPv6 block: matches no IPv4 address.
    Nothing,
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// The policy's own (no namespaceSelector).
    Own(String),
    Matching(Selector),
}

impl Namespaces {
    pub fn matches(&self, ns: &str, ns_labels: &Labels) -> bool {
        match self {
            Namespaces::Own(own) => own == ns,
            Namespaces::Matching(s) => s.matches(ns_labels),
        }
    }
}

/// One entry of `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    Range {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// Resolved per destination pod from its container ports.
    Named { protocol: Protocol, name: String },
    /// Every port of a protocol (no `port`).
    All(Protocol),
}

impl Port {
    /// The ports this entry opens on a pod with `pod_ports` (named ports
    /// need the pod; without one they open nothing).
    pub fn resolve(&self, pod_ports: Option<&[NamedPort]>) -> PortSet {
        match self {
            Port::Range {
                protocol,
                start,
                end,
            } => PortSet::of(
                *protocol,
                [PortRange {
                    start: *start,
                    end: *end,
                }],
            ),
            Port::All(p) => PortSet::of(*p, [PortRange::ALL]),
            Port::Named { protocol, name } => PortSet::of(
                *protocol,
                pod_ports
                    .into_iter()
                    .flatten()
                    .filter(|np| np.name == *name && np.protocol == *protocol)
                    .map(|np| PortRange::one(np.port)),
            ),
        }
    }

    pub fn is_named(&self) -> bool {
        matches!(self, Port::Named { .. })
    }

    pub fn matches(&self, pod_ports: Option<&[NamedPort]>, proto: u8, port: u16) -> bool {
        self.resolve(pod_ports).allows(proto, port)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Port::Range {
                protocol,
                start,
                end,
            } if start == end => write!(f, "{start}/{protocol}"),
            Port::Range {
                protocol,
                start,
                end,
            } => write!(f, "{start}-{end}/{protocol}"),
            Port::Named { protocol, name } => write!(f, "{name}/{protocol}"),
            Port::All(p) => write!(f, "*/{p}"),
        }
    }
}

/// Reads a NetworkPolicy (networking.k8s.io/v1).
pub fn parse_policy(np: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let name = np.metadata.name.clone().ok_or(PolicyError::MissingName {
        kind: "NetworkPolicy",
    })?;
    let namespace = np
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| PolicyError::MissingNamespace {
            kind: "NetworkPolicy",
            name: name.clone(),
        })?;
    let key = PolicyKey { namespace, name };
    let spec = np.spec.clone().unwrap_or_default();
    let sel_err = |source| PolicyError::Selector {
        policy: key.clone(),
        source,
    };
    let selector = Selector::parse_opt(spec.pod_selector.as_ref()).map_err(sel_err)?;

    // policyTypes: explicit, or Ingress always plus Egress when egress rules exist.
    let (mut ingress_type, mut egress_type) = (false, false);
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress_type = true,
                    "Egress" => egress_type = true,
                    other => {
                        return Err(PolicyError::PolicyType {
                            policy: key.clone(),
                            value: other.to_owned(),
                        })
                    }
                }
            }
        }
        _ => {
            ingress_type = true;
            egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }

    let mut ingress = None;
    if ingress_type {
        let mut rules = Vec::new();
        for r in spec.ingress.iter().flatten() {
            rules.push(parse_rule(&key, r.from.as_deref(), r.ports.as_deref())?);
        }
        ingress = Some(rules);
    }
    let mut egress = None;
    if egress_type {
        let mut rules = Vec::new();
        for r in spec.egress.iter().flatten() {
            rules.push(parse_rule(&key, r.to.as_deref(), r.ports.as_deref())?);
        }
        egress = Some(rules);
    }
    Ok(Policy {
        key,
        selector,
        ingress,
        egress,
    })
}

fn parse_rule(
    key: &PolicyKey,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, PolicyError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .map(|p| parse_peer(key, p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .map(|p| parse_port(key, p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn parse_prefix(key: &PolicyKey, s: &str) -> Result<Option<Prefix>, PolicyError> {
    let bad = || PolicyError::Cidr {
        policy: key.clone(),
        value: s.to_owned(),
    };
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if let Ok(a) = addr.parse::<Ipv4Addr>() {
        // Host bits are cleared, as Go's net.ParseCIDR does.
        return Prefix::new(a, len).map(Some).map_err(|_| bad());
    }
    match addr.parse::<std::net::Ipv6Addr>() {
        Ok(_) if len <= 128 => Ok(None),
        _ => Err(bad()),
    }
}

fn parse_peer(key: &PolicyKey, p: &NetworkPolicyPeer) -> Result<Peer, PolicyError> {
    let sel_err = |source| PolicyError::Selector {
        policy: key.clone(),
        source,
    };
    match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
        (Some(b), None, None) => {
            let Some(cidr) = parse_prefix(key, &b.cidr)? else {
                for e in b.except.iter().flatten() {
                    parse_prefix(key, e)?;
                }
                return Ok(Peer::Nothing);
            };
            let mut except = Vec::new();
            for e in b.except.iter().flatten() {
                if let Some(e) = parse_prefix(key, e)? {
                    except.push(e);
                }
            }
            Ok(Peer::Block { cidr, except })
        }
        (None, None, None) | (Some(_), _, _) => Err(PolicyError::Peer {
            policy: key.clone(),
        }),
        (None, pods, namespaces) => Ok(Peer::Pods {
            namespaces: match namespaces {
                None => Namespaces::Own(key.namespace.clone()),
                Some(s) => Namespaces::Matching(Selector::parse(s).map_err(sel_err)?),
            },
            pods: Selector::parse_opt(pods.as_ref()).map_err(sel_err)?,
        }),
    }
}

fn parse_port(key: &PolicyKey, p: &NetworkPolicyPort) -> Result<Port, PolicyError> {
    let protocol: Protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => match s {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return Err(PolicyError::Protocol {
                    policy: key.clone(),
                    value: other.to_owned(),
                })
            }
        },
    };
    let number = |v: i64| {
        u16::try_from(v)
            .ok()
            .filter(|&n| n != 0)
            .ok_or(PolicyError::Port {
                policy: key.clone(),
                value: v,
            })
    };
    match (&p.port, p.end_port) {
        (None, None) => Ok(Port::All(protocol)),
        (None, Some(end)) => Err(PolicyError::EndPortNeedsNumber {
            policy: key.clone(),
            port: "no port".to_owned(),
            end_port: i64::from(end),
        }),
        (Some(IntOrString::Int(n)), end) => {
            let start = number(i64::from(*n))?;
            let end = match end {
                None => start,
                Some(e) => match u16::try_from(e) {
                    Ok(e) if e >= start => e,
                    _ => {
                        return Err(PolicyError::EndPort {
                            policy: key.clone(),
                            port: i64::from(*n),
                            end_port: i64::from(e),
                        })
                    }
                },
            };
            Ok(Port::Range {
                protocol,
                start,
                end,
            })
        }
        (Some(IntOrString::String(s)), end) => {
            if let Some(e) = end {
                return Err(PolicyError::EndPortNeedsNumber {
                    policy: key.clone(),
                    port: s.clone(),
                    end_port: i64::from(e),
                });
            }
            // A numeric string is a number (the API server allows "80").
            match s.parse::<i64>() {
                Ok(n) => number(n).map(|n| Port::Range {
                    protocol,
                    start: n,
                    end: n,
                }),
                Err(_) => Ok(Port::Named {
                    protocol,
                    name: s.clone(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(v: serde_json::Value) -> Result<Policy, PolicyError> {
        parse_policy(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn policy_types_are_inferred() {
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {}})).unwrap();
        assert_eq!(p.ingress, Some(vec![]));
        assert_eq!(p.egress, None);
        assert!(p.selector.is_everything());
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "egress": [{}]}}))
        .unwrap();
        assert!(p.ingress.is_some());
        assert_eq!(
            p.egress,
            Some(vec![Rule {
                peers: None,
                ports: None
            }])
        );
        // An empty egress list infers no Egress type.
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "egress": []}}))
        .unwrap();
        assert_eq!(p.egress, None);
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}}))
        .unwrap();
        assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
    }

    #[test]
    fn peers_and_ports() {
        let p = policy(json!({"metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{
            "from": [
                {"podSelector": {"matchLabels": {"pod": "a"}}},
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}},
                {"ipBlock": {"cidr": "198.19.0.0/16", "except": ["198.19.1.0/24", "fd00::/64"]}},
                {"ipBlock": {"cidr": "fd00::/8"}},
            ],
            "ports": [
                {"port": 80},
                {"port": "8080", "protocol": "UDP"},
                {"port": "http"},
                {"port": 9000, "endPort": 9100, "protocol": "SCTP"},
                {"protocol": "UDP"},
            ]}]}}))
        .unwrap();
        let r = &p.ingress.unwrap()[0];
        let peers = r.peers.as_ref().unwrap();
        assert!(matches!(&peers[0], Peer::Pods { namespaces: Namespaces::Own(n), .. } if n == "x"));
        assert!(
            matches!(&peers[1], Peer::Pods { namespaces: Namespaces::Matching(_), pods } if pods.is_everything())
        );
        assert!(matches!(&peers[2], Peer::Block { except, .. } if except.len() == 1));
        assert_eq!(peers[3], Peer::Nothing);
        let ports: Vec<String> = r.ports.iter().flatten().map(|p| p.to_string()).collect();
        assert_eq!(
            ports,
            ["80/TCP", "8080/UDP", "http/TCP", "9000-9100/SCTP", "*/UDP"]
        );
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        let bad = |spec: serde_json::Value| {
            policy(json!({"metadata": {"name": "p", "namespace": "x"}, "spec": spec})).unwrap_err()
        };
        assert!(matches!(
            bad(json!({"ingress": [{"from": [{}]}]})),
            PolicyError::Peer { .. }
        ));
        assert!(matches!(
            bad(
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "1.2.3.0/24"}, "podSelector": {}}]}]})
            ),
            PolicyError::Peer { .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "1.2.3.0/33"}}]}]})),
            PolicyError::Cidr { .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": 0}]}]})),
            PolicyError::Port { value: 0, .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": 70000}]}]})),
            PolicyError::Port { value: 70000, .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]})),
            PolicyError::EndPort { .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]})),
            PolicyError::EndPortNeedsNumber { .. }
        ));
        assert!(matches!(
            bad(json!({"ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]})),
            PolicyError::Protocol { .. }
        ));
        assert!(matches!(
            bad(json!({"policyTypes": ["Sideways"]})),
            PolicyError::PolicyType { .. }
        ));
        let e = parse_policy(&serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap())
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "NetworkPolicy \"p\" without metadata.namespace"
        );
        assert!("x".parse::<PodKey>().is_err());
        assert_eq!("x/a".parse::<PodKey>().unwrap(), PodKey::new("x", "a"));
    }

    #[test]
    fn pods() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}, "uid": "u1"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "name": "serve-80-tcp"},
                {"containerPort": 81, "name": "serve-81-udp", "protocol": "UDP"},
                {"containerPort": 82}
            ]}]},
            "status": {"podIPs": [{"ip": "fd00::1"}, {"ip": "198.19.1.2"}], "phase": "Running"}
        }))
        .unwrap();
        let (k, info) = pod_info(&pod).unwrap();
        assert_eq!(k.to_string(), "x/a");
        assert_eq!(info.status_ip, Some(Ipv4Addr::new(198, 19, 1, 2)));
        assert_eq!(info.ports.len(), 2);
        assert!(info.active);
        let mut done = pod.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!pod_info(&done).unwrap().1.active);
    }
}
