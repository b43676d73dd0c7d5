//! Compiler behaviour beyond the truth tables: incremental recompilation,
//! address generations, explain, bad input.

use std::net::Ipv4Addr;

use serde_json::json;
use sluice_dataplane::buf::PortId;
use sluice_dataplane::drop::DropReason;
use sluice_dataplane::policy::conntrack::tcp_flags::SYN;
use sluice_dataplane::policy::{NetPolicy, Policy, Protocol, Verdict};

use super::testkit::{namespace, netpol, packet, TestPod, World};
use super::{Compiler, PodKey, PolicyError, PolicyKey, Target};

fn pod(ns: &str, name: &str, labels: serde_json::Value, ip: [u8; 4], node: usize) -> TestPod {
    TestPod {
        key: PodKey::new(ns, name),
        ip: Ipv4Addr::from(ip),
        node,
        labels,
        ports: vec![json!({"containerPort": 8080, "name": "http"})],
    }
}

/// Namespace x: web pods (app=web) and db pods (app=db), on node 0, plus
/// other pods on node 1.
fn world() -> World {
    let mut pods = Vec::new();
    for i in 0..4u8 {
        pods.push(pod(
            "x",
            &format!("web{i}"),
            json!({"app": "web"}),
            [198, 19, 1, 10 + i],
            0,
        ));
        pods.push(pod(
            "x",
            &format!("db{i}"),
            json!({"app": "db"}),
            [198, 19, 1, 20 + i],
            0,
        ));
        pods.push(pod(
            "x",
            &format!("other{i}"),
            json!({"app": "other"}),
            [198, 19, 2, 10 + i],
            1,
        ));
    }
    World::new(&[namespace("x", json!({}))], pods)
}

#[test]
fn recompiles_only_what_a_change_touches() {
    let mut w = world();
    w.apply(&netpol(
        "x",
        "db-from-web",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}),
    ));
    w.tables();
    let c = &w.compilers[0];
    // Two identities on node 0 (web, db), one rule set each direction at most.
    assert_eq!(c.stats().identities_compiled, 2);
    let s0 = c.stats();
    // A pod no rule names changes labels: nothing to recompile.
    w.relabel_pod("x/other0", json!({"app": "other", "v": "2"}));
    w.tables();
    assert_eq!(
        w.compilers[0].stats().identities_compiled,
        s0.identities_compiled
    );
    // A new web replica (a peer of db): only db is recompiled.
    w.relabel_pod("x/other1", json!({"app": "web"}));
    w.tables();
    assert_eq!(
        w.compilers[0].stats().identities_compiled,
        s0.identities_compiled + 1
    );
    // Replicas share one rule set.
    let t = w.tables();
    let db: Vec<_> = t[0]
        .policy
        .endpoints()
        .filter_map(|(_, p)| p.ingress)
        .collect();
    assert_eq!(db.len(), 4);
    assert!(db.iter().all(|id| *id == db[0]));
    assert_eq!(t[0].policy.rule_sets().len(), 1);
    assert_eq!(t[0].policy.rule_sets()[0].rules(), 5);
}

#[test]
fn reused_address_gets_a_new_generation_and_no_old_connection() {
    let mut w = world();
    w.apply(&netpol(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    let t = w.tables();
    let ip = Ipv4Addr::new(198, 19, 1, 10);
    let g1 = t[0].policy.ip_generation(u32::from(ip));
    assert_ne!(g1, 0);
    // x/web0 opens a connection to x/other0 (node 1); the reply gets in.
    let mut np = NetPolicy::default();
    let fwd = sluice_dataplane::flow::FlowKey {
        src: u32::from(ip),
        dst: u32::from(Ipv4Addr::new(198, 19, 2, 10)),
        sport: 40000,
        dport: 8080,
        proto: 6,
    };
    let web0 = t[0].endpoints.by_ip(fwd.src).unwrap();
    let mut p = packet(fwd, SYN);
    p.meta.src_ep = web0;
    p.meta.in_port = PortId(2);
    assert_eq!(np.egress(&t[0], &p, 0), Verdict::Allow);
    let mut reply = packet(fwd.reversed(), SYN | 0x10);
    reply.meta.dst_ep = web0;
    reply.meta.in_port = PortId::UPLINK;
    assert_eq!(np.ingress(&t[0], &reply, 1), Verdict::Allow);
    // The pod goes; a new one gets its address.
    for c in &mut w.compilers {
        c.remove_pod(&PodKey::new("x", "web0"));
    }
    assert_eq!(w.compilers[0].build().ip_generation(u32::from(ip)), 0);
    let new = pod("x", "web9", json!({"app": "web"}), [198, 19, 1, 10], 0);
    w.pods[0] = new.clone();
    for c in &mut w.compilers {
        c.upsert_pod(&new.object()).unwrap();
    }
    w.compilers[0].set_local_endpoints(
        w.pods
            .iter()
            .filter(|p| p.node == 0)
            .map(|p| (p.key.clone(), p.ip)),
    );
    let t2 = w.tables();
    let g2 = t2[0].policy.ip_generation(u32::from(ip));
    assert!(g2 != 0 && g2 != g1);
    // The old connection's reply is now a new flow into an isolated pod.
    let mut reply = packet(fwd.reversed(), 0x10);
    reply.meta.dst_ep = t2[0].endpoints.by_ip(fwd.src).unwrap();
    reply.meta.in_port = PortId::UPLINK;
    assert_eq!(
        np.ingress(&t2[0], &reply, 2),
        Verdict::Deny(DropReason::PolicyDeniedIngress)
    );
    assert_eq!(np.counters().stale, 1);
}

#[test]
fn local_address_overrides_status_and_unknown_pods() {
    let mut c = Compiler::new();
    let ip = Ipv4Addr::new(198, 19, 1, 99);
    c.set_local_endpoints([(PodKey::new("x", "new"), ip)]);
    // The pod object is not there yet: open unless told to isolate.
    assert!(!c.build().knows(ip));
    c.set_isolate_unknown(true);
    let t = c.build();
    assert!(!t.ingress_allows(u32::from(ip), 1, 6, 80));
    // The pod arrives without status.podIP (CNI ADD comes first).
    let p: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "new", "namespace": "x", "labels": {"app": "db"}}}))
    .unwrap();
    c.upsert_pod(&p).unwrap();
    c.upsert_policy(&netpol(
        "x",
        "db",
        json!({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 5432}]}]}),
    ))
    .unwrap();
    let t = c.build();
    assert!(t.knows(ip));
    assert!(t.ingress_allows(u32::from(ip), 1, 6, 5432));
    assert!(!t.ingress_allows(u32::from(ip), 1, 6, 80));
    assert_eq!(c.pod_ip(&PodKey::new("x", "new")), Some(ip));
    assert_eq!(c.pod_at(ip), Some(&PodKey::new("x", "new")));
}

#[test]
fn explain_names_policies_and_the_deciding_rule() {
    let mut w = world();
    w.apply(&netpol(
        "x",
        "db-from-web",
        json!({"podSelector": {"matchLabels": {"app": "db"}},
               "ingress": [{"ports": [{"port": 5432}]},
                           {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                            "ports": [{"port": "http"}]}]}),
    ));
    let c = &w.compilers[0];
    let e = c.explain(
        &"x/web0".parse().unwrap(),
        &"x/db1".parse().unwrap(),
        8080,
        Protocol::Tcp,
    );
    assert!(e.allowed);
    assert!(!e.egress.isolated);
    assert_eq!(e.ingress.policies, vec![PolicyKey::new("x", "db-from-web")]);
    assert_eq!(e.ingress.rule.as_ref().unwrap().index, 1);
    assert_eq!(
        e.to_string(),
        "x/web0 -> x/db1 8080/TCP: ALLOWED\n  \
         egress of x/web0: allowed (not isolated); selecting policies: []\n  \
         ingress of x/db1: allowed by x/db-from-web ingress[1]; selecting policies: [x/db-from-web]\n"
    );
    let e = c.explain(
        &Target::Ip(Ipv4Addr::new(203, 0, 113, 1)),
        &"x/db1".parse().unwrap(),
        8080,
        Protocol::Tcp,
    );
    assert!(!e.allowed && e.ingress.isolated && e.ingress.rule.is_none());
    assert_eq!(e.egress.pod, None);
    // An address that belongs to a pod is that pod.
    let e = c.explain(
        &"198.19.1.10".parse().unwrap(),
        &"x/db1".parse().unwrap(),
        8080,
        Protocol::Tcp,
    );
    assert!(e.allowed);
    assert_eq!(e.egress.pod, Some(PodKey::new("x", "web0")));
    let json = serde_json::to_string(&e).unwrap();
    assert!(json.contains("\"direction\":\"ingress\""));
}

#[test]
fn bad_objects_are_refused_and_change_nothing() {
    let mut c = Compiler::new();
    let bad = netpol(
        "x",
        "bad",
        json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}),
    );
    let e = c.upsert_policy(&bad).unwrap_err();
    assert!(matches!(e, PolicyError::Selector { .. }));
    assert_eq!(
        e.to_string(),
        "NetworkPolicy x/bad: selector operator \"Is\" on key \"a\": expected In, NotIn, Exists or DoesNotExist"
    );
    assert!(c.policy(&PolicyKey::new("x", "bad")).is_none());
    let nameless: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}})).unwrap();
    assert_eq!(
        c.upsert_pod(&nameless),
        Err(PolicyError::MissingName { kind: "Pod" })
    );
    assert!(c
        .upsert_namespace(&namespace("z", json!({"a": "b"})))
        .is_ok());
    c.remove_namespace("z");
    assert_eq!(c.namespace_labels("z").len(), 1);
}
