//! Property test: the compiler plus the dataplane classifier and enforcer
//! agree with a direct reading of the Kubernetes semantics, written here
//! from the documentation over the raw Kubernetes objects (sharing no code
//! with the compiler), on random small clusters and policies.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_dataplane::policy::Protocol;
use sluice_dataplane::table::Prefix;

use super::testkit::{namespace, netpol, Probe, TestPod, World};
use super::PodKey;

type Labels = BTreeMap<String, String>;

fn selects(s: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = s.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        let v = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| vals.contains(v)),
            "NotIn" => !v.is_some_and(|v| vals.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// `(ingress, egress)` policy types, explicit or as the API server defaults them.
fn types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.clone().unwrap_or_default();
    match spec.policy_types {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (true, spec.egress.is_some_and(|e| !e.is_empty())),
    }
}

struct RefPod {
    ns: String,
    labels: Labels,
    ip: Ipv4Addr,
    ports: Vec<(String, String, u16)>,
}

fn ref_pod(p: &Pod) -> RefPod {
    RefPod {
        ns: p.metadata.namespace.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ip: p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
        ports: p
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| {
                Some((
                    cp.name.clone()?,
                    cp.protocol.clone().unwrap_or("TCP".into()),
                    cp.container_port as u16,
                ))
            })
            .collect(),
    }
}

fn in_block(ip: Ipv4Addr, cidr: &str, except: &[String]) -> bool {
    let p: Prefix = cidr.parse().expect("generated cidr");
    p.contains(ip)
        && !except
            .iter()
            .any(|e| e.parse::<Prefix>().expect("generated except").contains(ip))
}

fn peer_ok(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    policy_ns: &str,
    other: &RefPod,
    ns_labels: &BTreeMap<String, Labels>,
) -> bool {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
        return true;
    };
    peers.iter().any(|peer| {
        if let Some(b) = &peer.ip_block {
            return in_block(other.ip, &b.cidr, b.except.as_deref().unwrap_or(&[]));
        }
        let ns_ok = match &peer.namespace_selector {
            None => other.ns == policy_ns,
            Some(s) => selects(s, &ns_labels[&other.ns]),
        };
        let pod_ok = peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| selects(s, &other.labels));
        ns_ok && pod_ok
    })
}

fn ports_ok(ports: Option<&Vec<NetworkPolicyPort>>, dst: &RefPod, proto: &str, port: u16) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        let pp = p.protocol.clone().unwrap_or("TCP".into());
        pp == proto
            && match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => {
                    let lo = *n as u16;
                    let hi = p.end_port.map_or(lo, |e| e as u16);
                    lo <= port && port <= hi
                }
                Some(IntOrString::String(name)) => dst
                    .ports
                    .iter()
                    .any(|(n, pr, num)| n == name && *pr == pp && *num == port),
            }
    })
}

fn reference(
    pols: &[NetworkPolicy],
    ns_labels: &BTreeMap<String, Labels>,
    src: &RefPod,
    dst: &RefPod,
    probe: Probe,
) -> bool {
    let proto = probe.protocol.as_str();
    let side = |me: &RefPod, egress: bool| {
        let mut isolated = false;
        let mut allowed = false;
        for p in pols {
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            let spec = p.spec.clone().unwrap_or_default();
            let sel = spec.pod_selector.clone().unwrap_or_default();
            if ns != me.ns || !selects(&sel, &me.labels) {
                continue;
            }
            let (ing, eg) = types(p);
            if egress && eg {
                isolated = true;
                allowed |= spec.egress.iter().flatten().any(|r| {
                    peer_ok(r.to.as_ref(), ns, dst, ns_labels)
                        && ports_ok(r.ports.as_ref(), dst, proto, probe.port)
                });
            }
            if !egress && ing {
                isolated = true;
                allowed |= spec.ingress.iter().flatten().any(|r| {
                    peer_ok(r.from.as_ref(), ns, src, ns_labels)
                        && ports_ok(r.ports.as_ref(), dst, proto, probe.port)
                });
            }
        }
        !isolated || allowed
    };
    side(src, true) && side(dst, false)
}

// ---- generators ----

fn arb_labels() -> impl Strategy<Value = Value> {
    (0u8..3, 0u8..3).prop_map(|(app, tier)| {
        let mut m = serde_json::Map::new();
        if app > 0 {
            m.insert("app".into(), json!(["a", "b"][app as usize - 1]));
        }
        if tier > 0 {
            m.insert("tier".into(), json!(["f", "b"][tier as usize - 1]));
        }
        Value::Object(m)
    })
}

fn arb_selector() -> impl Strategy<Value = Value> {
    let keys = ["app", "tier", "env"];
    let vals = ["a", "b", "f", "prod", "dev"];
    prop_oneof![
        Just(json!({})),
        (0usize..2, 0usize..2).prop_map(move |(k, v)| json!({"matchLabels": {keys[k]: vals[v]}})),
        (0usize..3, 0usize..4, 0usize..5).prop_map(move |(k, op, v)| {
            let op = ["In", "NotIn", "Exists", "DoesNotExist"][op];
            if op == "In" || op == "NotIn" {
                json!({"matchExpressions": [{"key": keys[k], "operator": op, "values": [vals[v]]}]})
            } else {
                json!({"matchExpressions": [{"key": keys[k], "operator": op}]})
            }
        }),
    ]
}

const CIDRS: [&str; 4] = [
    "198.19.0.0/16",
    "198.19.1.0/24",
    "198.19.2.8/29",
    "0.0.0.0/0",
];
const EXCEPTS: [&str; 3] = ["198.19.1.10/32", "198.19.2.8/30", "198.19.1.8/29"];

fn arb_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_selector().prop_map(|s| json!({"podSelector": s})),
        arb_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (arb_selector(), arb_selector())
            .prop_map(|(n, p)| json!({"namespaceSelector": n, "podSelector": p})),
        (0usize..4, proptest::collection::vec(0usize..3, 0..3)).prop_map(|(c, ex)| {
            let cidr: Prefix = CIDRS[c].parse().unwrap();
            let except: Vec<&str> = ex
                .into_iter()
                .map(|e| EXCEPTS[e])
                .filter(|e| cidr.contains_prefix(&e.parse().unwrap()))
                .collect();
            json!({"ipBlock": {"cidr": CIDRS[c], "except": except}})
        }),
    ]
}

fn arb_port() -> impl Strategy<Value = Value> {
    (0usize..3, 0usize..6).prop_map(|(proto, port)| {
        let mut m = serde_json::Map::new();
        if proto > 0 {
            m.insert("protocol".into(), json!(["TCP", "UDP"][proto - 1]));
        }
        match port {
            0 => {}
            1 => {
                m.insert("port".into(), json!(80));
            }
            2 => {
                m.insert("port".into(), json!(81));
            }
            3 => {
                m.insert("port".into(), json!(80));
                m.insert("endPort".into(), json!(81));
            }
            4 => {
                m.insert("port".into(), json!("web"));
            }
            _ => {
                m.insert("port".into(), json!("alt"));
            }
        }
        Value::Object(m)
    })
}

fn arb_rules(peer_key: &'static str) -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(proptest::collection::vec(
        (
            proptest::option::of(proptest::collection::vec(arb_peer(), 0..3)),
            proptest::option::of(proptest::collection::vec(arb_port(), 0..3)),
        )
            .prop_map(move |(peers, ports)| {
                let mut m = serde_json::Map::new();
                if let Some(p) = peers {
                    m.insert(peer_key.into(), json!(p));
                }
                if let Some(p) = ports {
                    m.insert("ports".into(), json!(p));
                }
                Value::Object(m)
            }),
        0..3,
    ))
    .prop_map(|v| v.map(Value::from))
}

fn arb_policy() -> impl Strategy<Value = (usize, Value)> {
    (
        0usize..2,
        arb_selector(),
        0usize..4,
        arb_rules("from"),
        arb_rules("to"),
    )
        .prop_map(|(ns, sel, types, ing, eg)| {
            let mut m = serde_json::Map::new();
            m.insert("podSelector".into(), sel);
            match types {
                1 => {
                    m.insert("policyTypes".into(), json!(["Ingress"]));
                }
                2 => {
                    m.insert("policyTypes".into(), json!(["Egress"]));
                }
                3 => {
                    m.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
                }
                _ => {}
            }
            if let Some(i) = ing {
                m.insert("ingress".into(), i);
            }
            if let Some(e) = eg {
                m.insert("egress".into(), e);
            }
            (ns, Value::Object(m))
        })
}

fn arb_pod_ports() -> impl Strategy<Value = Vec<Value>> {
    (0u8..3, 0u8..3).prop_map(|(web, alt)| {
        let mut v = Vec::new();
        if web > 0 {
            v.push(json!({"containerPort": 79 + u16::from(web), "name": "web"}));
        }
        if alt > 0 {
            v.push(json!({"containerPort": 79 + u16::from(alt), "name": "alt", "protocol": "UDP"}));
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_dataplane_matches_reference(
        env in proptest::collection::vec(0usize..2, 2),
        pods in proptest::collection::vec((arb_labels(), arb_pod_ports()), 6),
        policies in proptest::collection::vec(arb_policy(), 1..4),
    ) {
        let nss = ["x", "y"];
        let mut ns_labels = BTreeMap::new();
        let mut ns_objs = Vec::new();
        for (i, n) in nss.iter().enumerate() {
            let e = ["prod", "dev"][env[i]];
            let l = json!({"ns": n, "env": e});
            ns_objs.push(namespace(n, l.clone()));
            let mut labels: Labels = serde_json::from_value(l).unwrap();
            labels.insert("kubernetes.io/metadata.name".into(), n.to_string());
            ns_labels.insert(n.to_string(), labels);
        }
        let test_pods: Vec<TestPod> = pods
            .into_iter()
            .enumerate()
            .map(|(i, (labels, ports))| TestPod {
                key: PodKey::new(nss[i / 3], format!("p{}", i % 3)),
                ip: Ipv4Addr::new(198, 19, (i / 3) as u8 + 1, 8 + (i % 3) as u8 * 2),
                node: i % 2,
                labels,
                ports,
            })
            .collect();
        let refs: Vec<RefPod> = test_pods.iter().map(|p| ref_pod(&p.object())).collect();
        let mut w = World::new(&ns_objs, test_pods);
        let mut objs = Vec::new();
        for (i, (ns, spec)) in policies.into_iter().enumerate() {
            let np = netpol(nss[ns], &format!("p{i}"), spec);
            w.apply(&np);
            objs.push(np);
        }
        for port in [80u16, 81, 53] {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                let probe = Probe { port, protocol };
                let m = w.matrix(probe);
                for (i, row) in m.iter().enumerate() {
                    for (j, got) in row.iter().enumerate() {
                        let want = reference(&objs, &ns_labels, &refs[i], &refs[j], probe);
                        prop_assert_eq!(*got, want, "{} -> {} {}\npolicies: {:#?}",
                            w.pods[i].key, w.pods[j].key, probe, objs);
                    }
                }
            }
        }
    }
}
