//! NetworkPolicy end to end: pods attached through the CNI plugin on two
//! nodes, objects applied with sluicectl on both, real TCP connections.
//! Egress is enforced at the source node, ingress at the destination node;
//! replies of allowed connections pass.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::{apply_both, delete_both, two_peered_nodes, Node, Pod, Underlay};
use common::skip_unless_root;

fn pod_yaml(ns: &str, name: &str, label: &str, node: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, labels: {{pod: {label}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, image: none, ports: [{{name: serve, containerPort: 5201}}]}}]}}\n\
         status: {{podIP: {ip}}}\n"
    )
}

/// Whether a TCP connection from `from` to `to`:5201 succeeds (iperf3, 1 s).
fn tcp_ok(from: &Pod, to: &Pod) -> bool {
    let mut srv = to
        .ns
        .spawn("iperf3", &["-s", "-1", "-B", &to.ip.to_string()]);
    to.wait_listening("-ltn", 5201);
    let out = from.ns.exec(
        "iperf3",
        &[
            "-c",
            &to.ip.to_string(),
            "-t",
            "1",
            "-J",
            "--connect-timeout",
            "1500",
        ],
    );
    drop(srv.wait_timeout(Duration::from_millis(500)));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) > 0.0
}

/// Whether a UDP datagram from `from` to `to`:5300 gets its echo back.
fn udp_ok(from: &Pod, to: &Pod) -> bool {
    let server = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',5300))\ns.settimeout(4)\n\
         d,a=s.recvfrom(100)\ns.sendto(d,a)\n",
        to.ip
    );
    let mut srv = to.ns.spawn("python3", &["-c", &server]);
    to.wait_listening("-lun", 5300);
    let client = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1.5)\n\
         s.sendto(b'probe',('{}',5300))\nassert s.recv(100)==b'probe'\n",
        to.ip
    );
    let ok = from.ns.exec("python3", &["-c", &client]).status.success();
    drop(srv.wait_timeout(Duration::from_millis(100)));
    ok
}

#[test]
fn policies_across_two_nodes() {
    if skip_unless_root() {
        return;
    }
    let (_u, a, b) = two_peered_nodes("pe", "vxlan", "socket");
    // Namespaces and pods exist before the pods are attached, as in Kubernetes.
    let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n---\n\
                      apiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n";
    apply_both(&a, &b, namespaces);
    let xa = a.add_pod_in("x", "a");
    let xd = a.add_pod_in("x", "d");
    let yb = b.add_pod_in("y", "b");
    let yc = b.add_pod_in("y", "c");
    let pods = [
        pod_yaml("x", "a", "a", "node1", xa.ip),
        pod_yaml("x", "d", "d", "node1", xd.ip),
        pod_yaml("y", "b", "b", "node2", yb.ip),
        pod_yaml("y", "c", "c", "node2", yc.ip),
    ]
    .join("---\n");
    apply_both(&a, &b, &pods);
    assert!(xa.ping_until(yb.ip, Duration::from_secs(10)), "{}", a.log());
    assert!(
        tcp_ok(&xa, &yb) && tcp_ok(&yb, &xa) && tcp_ok(&xa, &yc),
        "open before any policy"
    );

    // 1. Default-deny ingress in y: nothing reaches y; y still reaches x and
    //    the replies of those connections pass.
    let deny_y = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: y}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
    apply_both(&a, &b, deny_y);
    // sluicectl monitor on the destination node sees the denial, with the policy.
    let monitor = std::process::Command::new(common::cluster::bin("sluicectl"))
        .arg("--socket")
        .arg(b.socket())
        .args(["monitor", "--count", "1", "--timeout", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tcp_ok(&xa, &yb), "x/a -> y/b under default-deny ingress");
    let out = monitor.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    for want in [
        "y/b",
        "ingress",
        "drop",
        "policy_denied_ingress",
        "y/deny",
        &xa.ip.to_string(),
    ] {
        assert!(line.contains(want), "monitor line lacks {want}: {line}");
    }
    assert!(
        !xa.ping(yb.ip, 1),
        "ping x/a -> y/b under default-deny ingress"
    );
    assert!(
        tcp_ok(&yb, &xa),
        "y/b -> x/a (egress not isolated; replies allowed)"
    );
    let drops = b.ctl_json("stats")["drops"]["policy_denied_ingress"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        drops > 0,
        "denials counted as policy_denied_ingress on the destination node"
    );

    // 2. Allow x/a -> y/pod=b on the named port: only that.
    let allow = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-x, namespace: y}\n\
                 spec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: x}}\n    ports:\n    - {protocol: TCP, port: serve}\n    - {protocol: UDP, port: 5300}\n";
    apply_both(&a, &b, allow);
    assert!(
        tcp_ok(&xa, &yb),
        "x/a -> y/b:serve allowed (union of policies)"
    );
    assert!(!tcp_ok(&xa, &yc), "x/a -> y/c still denied");
    assert!(udp_ok(&xa, &yb), "UDP x/a -> y/b:5300 allowed");
    assert!(!udp_ok(&xa, &yc), "UDP x/a -> y/c denied");
    // sluicectl policy explain names the verdict and the deciding policy.
    let explain = |to: &str| {
        let (ok, out, err) = b.ctl(&[
            "--json", "policy", "explain", "--from", "x/a", "--to", to, "--port", "5201/TCP",
        ]);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let e = explain("y/b");
    assert_eq!(e["allowed"], true, "{e}");
    assert!(
        e.to_string().contains("allow-x"),
        "deciding policy named: {e}"
    );
    let e = explain("y/c");
    assert_eq!(e["allowed"], false, "{e}");
    assert!(e.to_string().contains("deny"), "{e}");
    let (ok, out, _) = b.ctl(&[
        "policy", "explain", "--from", "x/a", "--to", "y/c", "--port", "5201/TCP",
    ]);
    assert!(ok && !out.is_empty());

    // 3. ipBlock with except: y/c accepts node 1's pod range except x/a.
    let block = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: block, namespace: y}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: c}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 198.19.1.0/24, except: [{}/32]}}\n",
        xa.ip
    );
    apply_both(&a, &b, &block);
    assert!(
        tcp_ok(&xd, &yc) && udp_ok(&xd, &yc),
        "x/d -> y/c inside the ipBlock"
    );
    assert!(
        !tcp_ok(&xa, &yc) && !udp_ok(&xa, &yc),
        "x/a -> y/c is the except"
    );

    // 4. Default-deny egress in x: x/a reaches nobody; the source node drops.
    let deny_x = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
    apply_both(&a, &b, deny_x);
    assert!(!tcp_ok(&xa, &yb), "x/a egress denied");
    assert!(!udp_ok(&xa, &yb), "x/a UDP egress denied");
    let drops = a.ctl_json("stats")["drops"]["policy_denied_egress"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        drops > 0,
        "denials counted as policy_denied_egress on the source node"
    );

    // 5. Deleting the policies opens everything again (new connections).
    delete_both(
        &a,
        &b,
        &format!("{deny_y}---\n{allow}---\n{deny_x}---\n{block}"),
    );
    let (c_ok, b_ok) = (tcp_ok(&xa, &yc), tcp_ok(&xa, &yb));
    if !(c_ok && b_ok) {
        for (n, to) in [(&a, "y/c"), (&b, "y/c"), (&a, "y/b"), (&b, "y/b")] {
            eprintln!(
                "{} {to}: {}",
                n.name,
                n.ctl(&["policy", "explain", "--from", "x/a", "--to", to, "--port", "5201/TCP"])
                    .1
            );
        }
    }
    assert!(
        c_ok && b_ok,
        "open again after delete: y/c {c_ok} y/b {b_ok}"
    );
    assert!(udp_ok(&xa, &yc), "UDP open again after delete");
}

/// A pod selected by a deny-all policy applied before its ADD cannot send or
/// receive a single packet: the policy is in the tables when ADD returns.
#[test]
fn no_unprotected_window_after_add() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("pw");
    let mut a = Node::new(&u, "pw", 1, "vxlan", "socket");
    a.start();
    let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: locked}\n---\n\
                apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: locked}\n\
                spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
    let (ok, out) = a.apply(yaml);
    assert!(ok, "{out}");
    let free = a.add_pod_in("default", "free");
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: locked, uid: uid-p}\nspec: {containers: [{name: c, image: none}]}\n";
    let (ok, out) = a.apply(pod);
    assert!(ok, "{out}");
    let locked = a.add_pod_in("locked", "p");
    // The very first packets, right after ADD returned.
    assert!(!locked.ping(free.ip, 1), "locked pod sent a packet");
    assert!(!free.ping(locked.ip, 1), "locked pod received a packet");
}
