//! What the daemon uses of Nodes, Pods and Namespaces, checked and typed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod};
use sluice_dataplane::table::{Mode, Prefix};
use sluice_dataplane::wire::MacAddr;

use super::{K8sError, ObjectKey, Origin};

/// Node annotation carrying the node's VTEP MAC, when not the default derived from its address.
pub const VTEP_MAC_ANNOTATION: &str = "sluice.io/vtep-mac";
/// Node annotation carrying the mode other nodes use to reach it ("vxlan", "ipip", "native").
pub const MODE_ANNOTATION: &str = "sluice.io/mode";

fn missing(key: &ObjectKey, field: &str) -> K8sError {
    K8sError::MissingField {
        at: Origin::Object(Box::new(key.clone())),
        field: field.into(),
    }
}

fn invalid(key: &ObjectKey, field: String, value: &str, expected: &str) -> K8sError {
    K8sError::InvalidField {
        at: Origin::Object(Box::new(key.clone())),
        field,
        value: value.into(),
        expected: expected.into(),
    }
}

/// A peer node as the daemon routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.podCIDR`, or the first IPv4 entry of `spec.podCIDRs` (dual-stack nodes).
    pub pod_cidr: Prefix,
    /// The first IPv4 `InternalIP` in `status.addresses`.
    pub node_ip: Ipv4Addr,
    /// [`VTEP_MAC_ANNOTATION`], if set.
    pub vtep_mac: Option<MacAddr>,
    /// [`MODE_ANNOTATION`], if set.
    pub mode: Option<Mode>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> Result<NodeInfo, K8sError> {
        let key = ObjectKey::node(node.metadata.name.clone().unwrap_or_default());
        if key.name.is_empty() {
            return Err(missing(&key, "metadata.name"));
        }
        let spec = node.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidr.as_ref())
            .map(|c| ("spec.podCIDR".to_owned(), c))
            .into_iter()
            .chain(
                spec.and_then(|s| s.pod_cidrs.as_ref())
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c)),
            );
        let mut pod_cidr = None;
        for (field, c) in cidrs {
            if c.is_empty() || c.contains(':') {
                continue; // IPv6: Sluice routes IPv4 only.
            }
            let p = c
                .contains('/')
                .then(|| c.parse::<Prefix>().ok())
                .flatten()
                .ok_or_else(|| invalid(&key, field, c, "an IPv4 CIDR a.b.c.d/len"))?;
            pod_cidr = Some(p);
            break;
        }
        let pod_cidr = pod_cidr.ok_or_else(|| {
            missing(
                &key,
                "spec.podCIDR (an IPv4 CIDR in spec.podCIDR or spec.podCIDRs)",
            )
        })?;

        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .enumerate();
        let mut node_ip = None;
        for (i, a) in addresses {
            if a.type_ != "InternalIP" || a.address.contains(':') {
                continue;
            }
            let ip = a.address.parse::<Ipv4Addr>().map_err(|_| {
                invalid(
                    &key,
                    format!("status.addresses[{i}].address"),
                    &a.address,
                    "an IPv4 address",
                )
            })?;
            node_ip = Some(ip);
            break;
        }
        let node_ip = node_ip.ok_or_else(|| {
            missing(
                &key,
                "status.addresses (an InternalIP with an IPv4 address)",
            )
        })?;

        let annotation = |name: &str| {
            node.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(name))
                .map(|v| (format!("metadata.annotations[{name:?}]"), v))
        };
        let vtep_mac = annotation(VTEP_MAC_ANNOTATION)
            .map(|(field, v)| {
                v.parse::<MacAddr>()
                    .ok()
                    .filter(|m| !m.is_multicast() && *m != MacAddr::ZERO)
                    .ok_or_else(|| {
                        invalid(
                            &key,
                            field,
                            v,
                            "a unicast MAC address like 02:53:c6:12:00:01",
                        )
                    })
            })
            .transpose()?;
        let mode = annotation(MODE_ANNOTATION)
            .map(|(field, v)| {
                v.parse::<Mode>()
                    .map_err(|_| invalid(&key, field, v, "one of vxlan, ipip, native"))
            })
            .transpose()?;
        Ok(NodeInfo {
            name: key.name,
            pod_cidr,
            node_ip,
            vtep_mac,
            mode,
        })
    }
}

/// Transport protocol of a container port, as Kubernetes names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// "TCP", "UDP" or "SCTP".
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
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

    /// The IP protocol number.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port a pod's container declares; NetworkPolicies refer to it by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as endpoint and policy code see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.nodeName`: unset until the pod is scheduled.
    pub node_name: Option<String>,
    /// `spec.hostNetwork`: such a pod has the node's address and no Sluice endpoint.
    pub host_network: bool,
    /// `status.podIP`, or the first IPv4 entry of `status.podIPs`; unset until assigned.
    pub ip: Option<Ipv4Addr>,
    /// Ports of the containers and of sidecar init containers (restartPolicy Always), in order.
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Result<PodInfo, K8sError> {
        let m = &pod.metadata;
        let key = ObjectKey::from_meta(super::Kind::Pod, m.namespace.as_deref(), m.name.as_deref());
        if key.name.is_empty() {
            return Err(missing(&key, "metadata.name"));
        }
        let uid = m
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| missing(&key, "metadata.uid"))?;

        let status = pod.status.as_ref();
        let ips = status
            .and_then(|s| s.pod_ip.as_ref())
            .map(|ip| ("status.podIP".to_owned(), ip))
            .into_iter()
            .chain(
                status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, p)| (format!("status.podIPs[{i}].ip"), &p.ip)),
            );
        let mut ip = None;
        for (field, text) in ips {
            if text.is_empty() || text.contains(':') {
                continue;
            }
            ip = Some(
                text.parse::<Ipv4Addr>()
                    .map_err(|_| invalid(&key, field, text, "an IPv4 address"))?,
            );
            break;
        }

        let spec = pod.spec.as_ref();
        let mut ports = Vec::new();
        let containers = spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, c)| ("containers", i, c));
        let sidecars = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| ("initContainers", i, c));
        for (list, i, c) in containers.chain(sidecars) {
            container_ports(&key, list, i, c, &mut ports)?;
        }
        Ok(PodInfo {
            namespace: key.namespace.clone().unwrap_or_default(),
            name: key.name,
            uid,
            labels: m.labels.clone().unwrap_or_default(),
            node_name: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ip,
            ports,
        })
    }
}

fn container_ports(
    key: &ObjectKey,
    list: &str,
    i: usize,
    c: &Container,
    out: &mut Vec<NamedPort>,
) -> Result<(), K8sError> {
    for (j, p) in c.ports.iter().flatten().enumerate() {
        let field = |f: &str| format!("spec.{list}[{i}].ports[{j}].{f}");
        let port = u16::try_from(p.container_port)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| {
                invalid(
                    key,
                    field("containerPort"),
                    &p.container_port.to_string(),
                    "a port 1..=65535",
                )
            })?;
        let protocol = match p.protocol.as_deref() {
            None | Some("") => Protocol::Tcp,
            Some(s) => Protocol::from_name(s)
                .ok_or_else(|| invalid(key, field("protocol"), s, "TCP, UDP or SCTP"))?,
        };
        out.push(NamedPort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            protocol,
        });
    }
    Ok(())
}

/// A namespace as policy code sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    pub fn from_namespace(ns: &Namespace) -> Result<NamespaceInfo, K8sError> {
        let key = ObjectKey::namespace(ns.metadata.name.clone().unwrap_or_default());
        if key.name.is_empty() {
            return Err(missing(&key, "metadata.name"));
        }
        Ok(NamespaceInfo {
            name: key.name,
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_documents, Object};
    use super::*;

    const NODES: &str = include_str!("../../../fixtures/k8s/nodes.yaml");
    const NAMESPACES: &str = include_str!("../../../fixtures/k8s/namespaces.yaml");
    const PODS: &str = include_str!("../../../fixtures/k8s/pods.yaml");

    fn node(yaml: &str) -> Node {
        match parse_documents(yaml).unwrap().pop() {
            Some(Object::Node(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    fn pod(yaml: &str) -> Pod {
        match parse_documents(yaml).unwrap().pop() {
            Some(Object::Pod(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nodes_from_fixture() {
        let infos: Vec<NodeInfo> = parse_documents(NODES)
            .unwrap()
            .iter()
            .map(|o| match o {
                Object::Node(n) => NodeInfo::from_node(n).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            infos[0],
            NodeInfo {
                name: "node-1".into(),
                pod_cidr: "198.19.1.0/24".parse().unwrap(),
                node_ip: Ipv4Addr::new(198, 18, 0, 1),
                vtep_mac: Some("02:53:c6:12:00:01".parse().unwrap()),
                mode: Some(Mode::Vxlan),
            }
        );
        // Dual stack: the IPv4 entries are picked out of podCIDRs and addresses.
        assert_eq!(
            infos[1],
            NodeInfo {
                name: "node-2".into(),
                pod_cidr: "198.19.2.0/24".parse().unwrap(),
                node_ip: Ipv4Addr::new(198, 18, 0, 2),
                vtep_mac: None,
                mode: None,
            }
        );
    }

    #[test]
    fn node_errors_name_the_field() {
        let head = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n";
        let addr = "status:\n  addresses:\n  - {type: InternalIP, address: 198.18.0.9}\n";
        let cases = [
            (format!("{head}{addr}"), "Node n: missing spec.podCIDR"),
            (
                format!("{head}spec: {{podCIDRs: [\"fd00::/64\"]}}\n{addr}"),
                "Node n: missing spec.podCIDR",
            ),
            (
                format!("{head}spec: {{podCIDR: 198.19.9.1/24}}\n{addr}"),
                "Node n: invalid spec.podCIDR \"198.19.9.1/24\"",
            ),
            (
                format!("{head}spec: {{podCIDRs: [\"fd00::/64\", \"10.0.0\"]}}\n{addr}"),
                "Node n: invalid spec.podCIDRs[1] \"10.0.0\"",
            ),
            (
                format!("{head}spec: {{podCIDR: 198.19.9.0/24}}\n"),
                "Node n: missing status.addresses",
            ),
            (
                format!("{head}spec: {{podCIDR: 198.19.9.0/24}}\nstatus:\n  addresses:\n  - {{type: ExternalIP, address: 198.18.0.9}}\n"),
                "Node n: missing status.addresses",
            ),
            (
                format!("{head}spec: {{podCIDR: 198.19.9.0/24}}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: 198.18.0.300}}\n"),
                "Node n: invalid status.addresses[0].address \"198.18.0.300\"",
            ),
            (
                format!("{head}  annotations: {{sluice.io/vtep-mac: \"zz\"}}\nspec: {{podCIDR: 198.19.9.0/24}}\n{addr}"),
                "Node n: invalid metadata.annotations[\"sluice.io/vtep-mac\"] \"zz\"",
            ),
            (
                format!("{head}  annotations: {{sluice.io/mode: \"gre\"}}\nspec: {{podCIDR: 198.19.9.0/24}}\n{addr}"),
                "Node n: invalid metadata.annotations[\"sluice.io/mode\"] \"gre\"",
            ),
        ];
        for (yaml, want) in &cases {
            let msg = NodeInfo::from_node(&node(yaml)).unwrap_err().to_string();
            assert!(msg.starts_with(want), "{yaml}\ngot:  {msg}\nwant: {want}");
        }
        let e = NodeInfo::from_node(&Node::default()).unwrap_err();
        assert_eq!(e.to_string(), "Node (unnamed): missing metadata.name");
    }

    #[test]
    fn pods_from_fixture() {
        let infos: Vec<PodInfo> = parse_documents(PODS)
            .unwrap()
            .iter()
            .map(|o| match o {
                Object::Pod(p) => PodInfo::from_pod(p).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        let a = &infos[0];
        assert_eq!((a.namespace.as_str(), a.name.as_str()), ("x", "a"));
        assert_eq!(a.uid, "0b5c1a52-0001-4c1e-9a39-000000000001");
        assert_eq!(a.labels.get("pod").map(String::as_str), Some("a"));
        assert_eq!(a.node_name.as_deref(), Some("node-1"));
        assert_eq!(a.ip, Some(Ipv4Addr::new(198, 19, 1, 10)));
        assert!(!a.host_network);
        assert_eq!(
            a.ports,
            [
                NamedPort {
                    name: Some("serve-80-tcp".into()),
                    port: 80,
                    protocol: Protocol::Tcp
                },
                NamedPort {
                    name: Some("serve-81-udp".into()),
                    port: 81,
                    protocol: Protocol::Udp
                },
                NamedPort {
                    name: Some("serve-82-sctp".into()),
                    port: 82,
                    protocol: Protocol::Sctp
                },
                NamedPort {
                    name: Some("metrics".into()),
                    port: 9090,
                    protocol: Protocol::Tcp
                },
            ]
        );
        // Pending pod: not scheduled, no address yet.
        let pending = infos.iter().find(|p| p.name == "pending").unwrap();
        assert_eq!((pending.node_name.as_ref(), pending.ip), (None, None));
        assert!(pending.ports.is_empty());
    }

    #[test]
    fn pod_ip_and_port_rules() {
        let head = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, uid: u1}\n";
        let dual = format!(
            "{head}spec: {{containers: [], hostNetwork: true}}\nstatus: {{podIP: \"fd00::5\", podIPs: [{{ip: \"fd00::5\"}}, {{ip: 198.19.1.5}}]}}\n"
        );
        let info = PodInfo::from_pod(&pod(&dual)).unwrap();
        assert_eq!(info.ip, Some(Ipv4Addr::new(198, 19, 1, 5)));
        assert!(info.host_network);
        let cases = [
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n".to_owned(),
                "Pod default/p: missing metadata.uid",
            ),
            (
                format!("{head}spec: {{containers: []}}\nstatus: {{podIP: 198.19.1}}\n"),
                "Pod x/p: invalid status.podIP \"198.19.1\"",
            ),
            (
                format!("{head}spec:\n  containers:\n  - name: c\n    ports: [{{containerPort: 70000}}]\n"),
                "Pod x/p: invalid spec.containers[0].ports[0].containerPort \"70000\"",
            ),
            (
                format!("{head}spec:\n  containers:\n  - name: c\n    ports: [{{containerPort: 0}}]\n"),
                "Pod x/p: invalid spec.containers[0].ports[0].containerPort \"0\"",
            ),
            (
                format!("{head}spec:\n  containers:\n  - name: c\n    ports: [{{containerPort: 53, protocol: udp}}]\n"),
                "Pod x/p: invalid spec.containers[0].ports[0].protocol \"udp\"",
            ),
        ];
        for (yaml, want) in &cases {
            let msg = PodInfo::from_pod(&pod(yaml)).unwrap_err().to_string();
            assert!(msg.starts_with(want), "{yaml}\ngot:  {msg}\nwant: {want}");
        }
    }

    #[test]
    fn namespaces_from_fixture() {
        let infos: Vec<NamespaceInfo> = parse_documents(NAMESPACES)
            .unwrap()
            .iter()
            .map(|o| match o {
                Object::Namespace(n) => NamespaceInfo::from_namespace(n).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(infos.len(), 3);
        assert_eq!(infos[1].name, "y");
        assert_eq!(infos[1].labels.get("ns").map(String::as_str), Some("y"));
        assert_eq!(
            infos[1]
                .labels
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("y")
        );
        assert!(NamespaceInfo::from_namespace(&Namespace::default()).is_err());
    }

    #[test]
    fn protocols() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_name(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::Sctp.ip_proto(), 132);
        assert_eq!(Protocol::from_name("tcp"), None);
    }
}
