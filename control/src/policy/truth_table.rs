//! Truth-table tests in the style of the upstream Kubernetes network-policy
//! e2e suite: namespaces x, y, z (labels `ns=x` ...) with pods a, b, c each
//! (labels `pod=a` ...), split over two nodes. Every scenario asserts the
//! full 9 x 9 matrix for ports 80 and 81, TCP and UDP, through the compiled
//! dataplane: a SYN (or datagram) through the source node's `NetPolicy`
//! egress and the destination node's ingress, and for every allowed cell its
//! reply back (which must pass whatever the reverse policy says).
//!
//! Tables: one row per source pod; columns are the destination pods in the
//! order x/a x/b x/c  y/a y/b y/c  z/a z/b z/c. `X` reachable, `.` not.
//!
//! Every pod serves 80 and 81 on TCP and UDP under the upstream port names
//! (`serve-80-tcp` ...), and a TCP port named `web` whose number differs per
//! pod: 80 on pods a, 81 on pods b, none on pods c.

use serde_json::json;

use super::testkit::{namespace, netpol, TestPod, World};

const ALL: &[&str] = &["80/TCP", "81/TCP", "80/UDP", "81/UDP"];

fn cluster() -> World {
    let mut pods = Vec::new();
    for (ni, ns) in ["x", "y", "z"].into_iter().enumerate() {
        for (pi, name) in ["a", "b", "c"].into_iter().enumerate() {
            let i = ni * 3 + pi;
            let mut ports = vec![
                json!({"containerPort": 80, "name": "serve-80-tcp"}),
                json!({"containerPort": 81, "name": "serve-81-tcp"}),
                json!({"containerPort": 80, "name": "serve-80-udp", "protocol": "UDP"}),
                json!({"containerPort": 81, "name": "serve-81-udp", "protocol": "UDP"}),
            ];
            match name {
                "a" => ports.push(json!({"containerPort": 80, "name": "web"})),
                "b" => ports.push(json!({"containerPort": 81, "name": "web"})),
                _ => {}
            }
            pods.push(TestPod {
                key: super::PodKey::new(ns, name),
                ip: std::net::Ipv4Addr::new(198, 19, ni as u8 + 1, 10 + pi as u8),
                // Alternate nodes: some pairs are same-node, some cross-node.
                node: i % 2,
                labels: json!({"pod": name}),
                ports,
            });
        }
    }
    let nss: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|n| namespace(n, json!({"ns": n})))
        .collect();
    World::new(&nss, pods)
}

const OPEN: &str = "
    x/a XXX XXX XXX
    x/b XXX XXX XXX
    x/c XXX XXX XXX
    y/a XXX XXX XXX
    y/b XXX XXX XXX
    y/c XXX XXX XXX
    z/a XXX XXX XXX
    z/b XXX XXX XXX
    z/c XXX XXX XXX";

#[test]
fn no_policy_allows_everything() {
    cluster().expect(ALL, OPEN);
}

#[test]
fn default_deny_ingress() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    w.expect(
        ALL,
        "
        x/a ... XXX XXX
        x/b ... XXX XXX
        x/c ... XXX XXX
        y/a ... XXX XXX
        y/b ... XXX XXX
        y/c ... XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
}

#[test]
fn default_deny_egress() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    ));
    w.expect(
        ALL,
        "
        x/a ... ... ...
        x/b ... ... ...
        x/c ... ... ...
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a XXX XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX",
    );
}

#[test]
fn allow_from_a_namespace() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a ... XXX XXX
        x/b ... XXX XXX
        x/c ... XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
}

#[test]
fn from_pods_in_a_namespace_is_an_and() {
    let mut w = cluster();
    // No policyTypes and no egress rules: Ingress only (inferred).
    w.apply(&netpol(
        "x",
        "a-from-y-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}},
             "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b XXX XXX XXX
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn separate_peers_are_an_or() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-from-y-or-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
            {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a .XX XXX XXX
        x/b XXX XXX XXX
        x/c .XX XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn ingress_ip_block_with_except() {
    let mut w = cluster();
    // y is 198.19.2.0/24, z is 198.19.3.0/24; y/b is 198.19.2.11.
    w.apply(&netpol(
        "x",
        "a-from-block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "198.19.2.0/23",
                         "except": ["198.19.2.11/32", "198.19.3.0/24"]}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a XXX XXX XXX
        y/b .XX XXX XXX
        y/c XXX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn egress_ip_block_with_except() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-to-block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "198.19.0.0/16",
                                               "except": ["198.19.3.0/24"]}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a XXX XXX ...
        x/b XXX XXX XXX
        x/c XXX XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a XXX XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX",
    );
}

#[test]
fn named_ports_upstream_names() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-81-by-name",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
            "ports": [{"port": "serve-81-tcp"}, {"port": "serve-80-udp", "protocol": "UDP"}]}]}),
    ));
    w.expect(&["81/TCP", "80/UDP"], OPEN);
    w.expect(
        &["80/TCP", "81/UDP"],
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b .XX XXX XXX
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn named_ingress_port_differs_per_pod() {
    let mut w = cluster();
    // `web` is 80 on x/a, 81 on x/b, absent on x/c.
    w.apply(&netpol(
        "x",
        "web",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}),
    ));
    w.expect(
        &["80/TCP"],
        "
        x/a X.. XXX XXX
        x/b X.. XXX XXX
        x/c X.. XXX XXX
        y/a X.. XXX XXX
        y/b X.. XXX XXX
        y/c X.. XXX XXX
        z/a X.. XXX XXX
        z/b X.. XXX XXX
        z/c X.. XXX XXX",
    );
    w.expect(
        &["81/TCP"],
        "
        x/a .X. XXX XXX
        x/b .X. XXX XXX
        x/c .X. XXX XXX
        y/a .X. XXX XXX
        y/b .X. XXX XXX
        y/c .X. XXX XXX
        z/a .X. XXX XXX
        z/b .X. XXX XXX
        z/c .X. XXX XXX",
    );
    w.expect(
        &["80/UDP", "81/UDP"],
        "
        x/a ... XXX XXX
        x/b ... XXX XXX
        x/c ... XXX XXX
        y/a ... XXX XXX
        y/b ... XXX XXX
        y/c ... XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
}

#[test]
fn named_egress_port_resolved_per_destination() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-to-web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": "web"}]}]}),
    ));
    let others = "
        x/b XXX XXX XXX
        x/c XXX XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a XXX XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX";
    w.expect(&["80/TCP"], &format!("x/a X.. X.. X..\n{others}"));
    w.expect(&["81/TCP"], &format!("x/a .X. .X. .X.\n{others}"));
    w.expect(&["80/UDP", "81/UDP"], &format!("x/a ... ... ...\n{others}"));
}

#[test]
fn end_port_ranges() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-ranges",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [
            {"port": 81, "endPort": 90},
            {"port": 70, "endPort": 80, "protocol": "UDP"}]}]}),
    ));
    w.expect(&["81/TCP", "80/UDP"], OPEN);
    w.expect(
        &["80/TCP", "81/UDP"],
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b .XX XXX XXX
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn union_of_several_policies() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-from-b-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
            "ports": [{"port": 80}]}]}),
    ));
    w.apply(&netpol(
        "x",
        "a-from-z-81",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
            "ports": [{"port": 81, "protocol": "TCP"}]}]}),
    ));
    w.apply(&netpol(
        "x",
        "ac-from-y-c",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    ));
    w.expect(
        &["80/TCP"],
        "
        x/a .X. XXX XXX
        x/b XX. XXX XXX
        x/c .X. XXX XXX
        y/a .X. XXX XXX
        y/b .X. XXX XXX
        y/c XXX XXX XXX
        z/a .X. XXX XXX
        z/b .X. XXX XXX
        z/c .X. XXX XXX",
    );
    w.expect(
        &["81/TCP"],
        "
        x/a .X. XXX XXX
        x/b .X. XXX XXX
        x/c .X. XXX XXX
        y/a .X. XXX XXX
        y/b .X. XXX XXX
        y/c XXX XXX XXX
        z/a XX. XXX XXX
        z/b XX. XXX XXX
        z/c XX. XXX XXX",
    );
    w.expect(
        &["80/UDP", "81/UDP"],
        "
        x/a .X. XXX XXX
        x/b .X. XXX XXX
        x/c .X. XXX XXX
        y/a .X. XXX XXX
        y/b .X. XXX XXX
        y/c XXX XXX XXX
        z/a .X. XXX XXX
        z/b .X. XXX XXX
        z/c .X. XXX XXX",
    );
}

#[test]
fn egress_only_to_dns() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "dns-only",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [
            {"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
    ));
    w.expect(&["53/UDP", "53/TCP"], OPEN);
    w.expect(
        ALL,
        "
        x/a ... ... ...
        x/b ... ... ...
        x/c ... ... ...
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a XXX XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX",
    );
}

#[test]
fn inferred_policy_types_with_egress_rules() {
    let mut w = cluster();
    // Egress rules and no policyTypes: Ingress and Egress, and no ingress
    // rules, so x/a receives nothing and may only send to y.
    w.apply(&netpol(
        "x",
        "a-to-y",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{"to": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a ... XXX ...
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b .XX XXX XXX
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn policy_on_a_pod_without_labels() {
    let mut w = cluster();
    w.relabel_pod("x/c", json!({}));
    w.apply(&netpol(
        "x",
        "unlabelled-from-x",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]},
               "ingress": [{"from": [{"podSelector": {}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a XXX XXX XXX
        x/b XXX XXX XXX
        x/c XXX XXX XXX
        y/a XX. XXX XXX
        y/b XX. XXX XXX
        y/c XX. XXX XXX
        z/a XX. XXX XXX
        z/b XX. XXX XXX
        z/c XX. XXX XXX",
    );
}

#[test]
fn deleting_a_policy() {
    let mut w = cluster();
    w.apply(&netpol("x", "deny-ingress", json!({"podSelector": {}})));
    w.apply(&netpol(
        "x",
        "a-from-y-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}},
             "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a ... XXX XXX
        x/b ... XXX XXX
        x/c ... XXX XXX
        y/a ... XXX XXX
        y/b X.. XXX XXX
        y/c ... XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
    let before = w.compilers[0].stats();
    w.delete("x", "deny-ingress");
    w.expect(
        ALL,
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b XXX XXX XXX
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
    // Only node 0's x pods were recompiled (x/a and x/c): two identities.
    assert_eq!(
        w.compilers[0].stats().identities_compiled - before.identities_compiled,
        2
    );
    w.delete("x", "a-from-y-b");
    w.expect(ALL, OPEN);
}

#[test]
fn relabelling_a_pod() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "a-from-b-anywhere",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a .XX XXX XXX
        x/b XXX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b XXX XXX XXX
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b XXX XXX XXX
        z/c .XX XXX XXX",
    );
    w.relabel_pod("z/c", json!({"pod": "b"}));
    w.relabel_pod("y/b", json!({"pod": "d"}));
    // x/b becomes pod=a: now isolated too.
    w.relabel_pod("x/b", json!({"pod": "a"}));
    w.expect(
        ALL,
        "
        x/a ..X XXX XXX
        x/b ..X XXX XXX
        x/c ..X XXX XXX
        y/a ..X XXX XXX
        y/b ..X XXX XXX
        y/c ..X XXX XXX
        z/a ..X XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX",
    );
}

#[test]
fn relabelling_a_namespace() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "from-team-blue",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
    ));
    w.upsert_namespace(&namespace("z", json!({"ns": "z", "team": "blue"})));
    w.expect(
        ALL,
        "
        x/a ... XXX XXX
        x/b ... XXX XXX
        x/c ... XXX XXX
        y/a ... XXX XXX
        y/b ... XXX XXX
        y/c ... XXX XXX
        z/a XXX XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX",
    );
    w.upsert_namespace(&namespace("z", json!({"ns": "z"})));
    w.upsert_namespace(&namespace("y", json!({"ns": "y", "team": "blue"})));
    w.expect(
        ALL,
        "
        x/a ... XXX XXX
        x/b ... XXX XXX
        x/c ... XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
}

#[test]
fn allow_all_ingress_and_egress_beat_default_deny() {
    let mut w = cluster();
    w.apply(&netpol(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    ));
    w.expect(
        ALL,
        "
        x/a ... ... ...
        x/b ... ... ...
        x/c ... ... ...
        y/a ... XXX XXX
        y/b ... XXX XXX
        y/c ... XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
    w.apply(&netpol(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}], "egress": [{}]}),
    ));
    w.expect(ALL, OPEN);
}

#[test]
fn ingress_and_egress_isolation_are_independent() {
    let mut w = cluster();
    // y/b may only send to x/a on 80; x/a may only receive from y/b.
    w.apply(&netpol(
        "y",
        "b-to-x-a-80",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                                   "podSelector": {"matchLabels": {"pod": "a"}}}],
                           "ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}]}]}),
    ));
    w.apply(&netpol(
        "x",
        "a-from-y-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    w.expect(
        &["80/TCP", "80/UDP"],
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b X.. ... ...
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
    w.expect(
        &["81/TCP", "81/UDP"],
        "
        x/a .XX XXX XXX
        x/b .XX XXX XXX
        x/c .XX XXX XXX
        y/a .XX XXX XXX
        y/b ... ... ...
        y/c .XX XXX XXX
        z/a .XX XXX XXX
        z/b .XX XXX XXX
        z/c .XX XXX XXX",
    );
}

#[test]
fn not_in_selectors() {
    let mut w = cluster();
    w.apply(&netpol(
        "y",
        "not-a-from-x",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]},
               "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                   {"key": "ns", "operator": "In", "values": ["x"]}]}}]}]}),
    ));
    w.expect(
        ALL,
        "
        x/a XXX XXX XXX
        x/b XXX XXX XXX
        x/c XXX XXX XXX
        y/a XXX X.. XXX
        y/b XXX X.. XXX
        y/c XXX X.. XXX
        z/a XXX X.. XXX
        z/b XXX X.. XXX
        z/c XXX X.. XXX",
    );
}

// ---- AdminNetworkPolicy: evaluated before NetworkPolicy ----

#[test]
fn admin_deny_beats_an_open_cluster() {
    let mut w = cluster();
    w.apply_admin(
        "no-z-into-x",
        json!({"priority": 10, "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
               "ingress": [{"name": "deny-z", "action": "Deny",
                            "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}]}]}),
    );
    w.expect(
        ALL,
        "
        x/a XXX XXX XXX
        x/b XXX XXX XXX
        x/c XXX XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a ... XXX XXX
        z/b ... XXX XXX
        z/c ... XXX XXX",
    );
    // Deleting it opens the cluster again.
    w.delete_admin("no-z-into-x");
    w.expect(ALL, OPEN);
}

#[test]
fn admin_allow_beats_a_network_policy_deny() {
    let mut w = cluster();
    w.apply(&netpol(
        "y",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    ));
    w.apply_admin(
        "monitoring",
        json!({"priority": 5, "subject": {"namespaces": {"matchLabels": {"ns": "y"}}},
               "ingress": [{"action": "Allow", "from": [{"pods": {
                   "namespaceSelector": {"matchLabels": {"ns": "x"}},
                   "podSelector": {"matchLabels": {"pod": "a"}}}}]}]}),
    );
    w.expect(
        ALL,
        "
        x/a XXX XXX XXX
        x/b XXX ... XXX
        x/c XXX ... XXX
        y/a XXX ... XXX
        y/b XXX ... XXX
        y/c XXX ... XXX
        z/a XXX ... XXX
        z/b XXX ... XXX
        z/c XXX ... XXX",
    );
    // explain names the admin rule that decided, and the NetworkPolicy
    // verdict where no admin rule matched.
    let c = &w.compilers[0];
    let tcp = sluice_dataplane::policy::Protocol::Tcp;
    let to: super::Target = "y/b".parse().unwrap();
    let x = c.explain(&"x/a".parse().unwrap(), &to, 80, tcp);
    assert!(x.allowed, "{x}");
    let admin = x.ingress.admin.as_ref().expect("admin rule");
    assert_eq!(
        (admin.policy.as_str(), admin.action.as_str()),
        ("monitoring", "Allow")
    );
    assert!(
        x.to_string()
            .contains("allowed by AdminNetworkPolicy monitoring ingress[0]"),
        "{x}"
    );
    let x = c.explain(&"x/b".parse().unwrap(), &to, 80, tcp);
    assert!(!x.allowed && x.ingress.admin.is_none(), "{x}");
}

#[test]
fn admin_pass_defers_to_network_policy_and_priorities_order_policies() {
    let mut w = cluster();
    // x admits only y (NetworkPolicy).
    w.apply(&netpol(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    // Priority 2 denies everything into every pod; priority 1 passes y's
    // traffic to NetworkPolicy first. Written in the other order on purpose.
    w.apply_admin(
        "a-deny-all",
        json!({"priority": 2, "subject": {"namespaces": {}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    w.apply_admin(
        "b-pass-y",
        json!({"priority": 1, "subject": {"namespaces": {}},
               "ingress": [{"action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    w.expect(
        ALL,
        "
        x/a ... ... ...
        x/b ... ... ...
        x/c ... ... ...
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a ... ... ...
        z/b ... ... ...
        z/c ... ... ...",
    );
    // Swapping the priorities: the deny now comes first and wins.
    w.apply_admin(
        "b-pass-y",
        json!({"priority": 3, "subject": {"namespaces": {}},
               "ingress": [{"action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    w.expect(
        ALL,
        "
        x/a ... ... ...
        x/b ... ... ...
        x/c ... ... ...
        y/a ... ... ...
        y/b ... ... ...
        y/c ... ... ...
        z/a ... ... ...
        z/b ... ... ...
        z/c ... ... ...",
    );
}

#[test]
fn admin_egress_by_port_and_rule_order() {
    let mut w = cluster();
    // x/a may not reach y on TCP 80; the later Allow does not undo it.
    w.apply_admin(
        "xa-egress",
        json!({"priority": 7, "subject": {"pods": {
                   "namespaceSelector": {"matchLabels": {"ns": "x"}},
                   "podSelector": {"matchLabels": {"pod": "a"}}}},
               "egress": [
                   {"action": "Deny", "to": [{"namespaces": {"matchLabels": {"ns": "y"}}}],
                    "ports": [{"portNumber": {"protocol": "TCP", "port": 80}}]},
                   {"action": "Allow", "to": [{"networks": ["198.19.0.0/16"]}]}]}),
    );
    w.expect(
        &["80/TCP"],
        "
        x/a XXX ... XXX
        x/b XXX XXX XXX
        x/c XXX XXX XXX
        y/a XXX XXX XXX
        y/b XXX XXX XXX
        y/c XXX XXX XXX
        z/a XXX XXX XXX
        z/b XXX XXX XXX
        z/c XXX XXX XXX",
    );
    w.expect(&["81/TCP", "80/UDP", "81/UDP"], OPEN);
}

#[test]
fn admin_named_ports_resolve_per_pod() {
    let mut w = cluster();
    // `web` is TCP 80 on pods a, TCP 81 on pods b, absent on pods c.
    w.apply_admin(
        "no-web-in-z",
        json!({"priority": 0, "subject": {"namespaces": {"matchLabels": {"ns": "z"}}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                            "ports": [{"namedPort": "web"}]}]}),
    );
    w.expect(
        &["80/TCP"],
        "
        x/a XXX XXX .XX
        x/b XXX XXX .XX
        x/c XXX XXX .XX
        y/a XXX XXX .XX
        y/b XXX XXX .XX
        y/c XXX XXX .XX
        z/a XXX XXX .XX
        z/b XXX XXX .XX
        z/c XXX XXX .XX",
    );
    w.expect(
        &["81/TCP"],
        "
        x/a XXX XXX X.X
        x/b XXX XXX X.X
        x/c XXX XXX X.X
        y/a XXX XXX X.X
        y/b XXX XXX X.X
        y/c XXX XXX X.X
        z/a XXX XXX X.X
        z/b XXX XXX X.X
        z/c XXX XXX X.X",
    );
    w.expect(&["80/UDP", "81/UDP"], OPEN);
}
