//! `sluicectl trace` on real nodes: a pod → remote pod packet shows every
//! stage on both nodes (encap on the sender, decap and delivery on the
//! receiver), and a packet a policy denies shows the policy step, the drop and
//! the policy that isolated the pod.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{bin, two_peered_nodes, Node};
use common::skip_unless_root;

fn start_trace(node: &Node, filter: &str, count: u32) -> Child {
    Command::new(bin("sluicectl"))
        .arg("--socket")
        .arg(node.socket())
        .args(["trace", "--count", &count.to_string(), "--timeout", "15"])
        .args(["--filter", filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> String {
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluicectl trace: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The stage names of the first packet block, in order.
fn stages(text: &str) -> Vec<String> {
    text.split("\n\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(" -> "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn trace_follows_a_packet_across_two_nodes() {
    if skip_unless_root() {
        return;
    }
    let (_u, a, b) = two_peered_nodes("tr", "vxlan", "socket");
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    assert!(a1.ping_until(b1.ip, Duration::from_secs(10)));

    let filter = format!("src {} dst {} icmp", a1.ip, b1.ip);
    let ta = start_trace(&a, &filter, 1);
    let tb = Command::new(bin("sluicectl"))
        .arg("--socket")
        .arg(b.socket())
        .args([
            "trace",
            "--count",
            "1",
            "--timeout",
            "15",
            "--port",
            "uplink",
        ])
        .args(["--filter", &filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let both traces reach their workers before the packet.
    std::thread::sleep(Duration::from_millis(800));
    assert!(a1.ping(b1.ip, 2));
    let (out_a, out_b) = (finish(ta), finish(tb));

    assert_eq!(
        stages(&out_a),
        [
            "ethernet-input",
            "ipv4-input",
            "policy-egress",
            "ipv4-lookup",
            "vxlan-encap"
        ],
        "sender:\n{out_a}"
    );
    assert!(out_a.contains("from port default/a1"), "{out_a}");
    assert!(out_a.contains("echo request"), "{out_a}");
    assert!(
        out_a.contains("vxlan vni 4096"),
        "the encap header:\n{out_a}"
    );
    assert!(out_a.contains("route "), "the route chosen:\n{out_a}");
    assert!(out_a.contains("sent on port uplink"), "{out_a}");

    assert_eq!(
        stages(&out_b),
        [
            "uplink-input",
            "ipv4-input",
            "ipv4-lookup",
            "policy-ingress",
            "local-delivery"
        ],
        "receiver:\n{out_b}"
    );
    assert!(out_b.contains("decapsulated"), "{out_b}");
    assert!(out_b.contains("sent on port default/b1"), "{out_b}");

    // A UDP packet that a default-deny ingress policy on b1 drops: the trace
    // on the receiving node ends in the policy stage and names the policy.
    let deny = "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n---\n\
                apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                metadata: {name: deny-all, namespace: default}\n\
                spec: {podSelector: {}, policyTypes: [Ingress]}\n";
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: b1, namespace: default, uid: uid-b1}}\n\
         spec: {{nodeName: {}, containers: [{{name: c, image: none}}]}}\nstatus: {{podIP: {}}}\n",
        b.name, b1.ip
    );
    let (ok, err) = b.apply(&pod);
    assert!(ok, "{err}");
    let (ok, err) = b.apply(deny);
    assert!(ok, "{err}");
    let tb = start_trace(&b, &format!("dst {} udp dport 5353", b1.ip), 1);
    std::thread::sleep(Duration::from_millis(800));
    let sent = a1
        .ns
        .exec(
            "bash",
            &["-c", &format!("echo hi > /dev/udp/{}/5353", b1.ip)],
        )
        .status
        .success();
    assert!(sent);
    let out_b = finish(tb);
    let last = out_b
        .lines()
        .rfind(|l| l.contains(" -> "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains("policy-ingress") && last.contains("drop: policy_denied_ingress"),
        "{out_b}"
    );
    assert!(
        last.contains("default/deny-all"),
        "the isolating policy:\n{out_b}"
    );
    assert!(out_b.contains("dropped"), "{out_b}");

    // A bad filter, or port, is refused by name.
    let (ok, _, err) = a.ctl(&["trace", "--port", "default/nobody", "--timeout", "1"]);
    assert!(!ok && err.contains("default/nobody"), "{err}");
    let (ok, _, err) = a.ctl(&["trace", "--filter", "dst nowhere", "--timeout", "1"]);
    assert!(!ok && err.contains("nowhere"), "{err}");
}
