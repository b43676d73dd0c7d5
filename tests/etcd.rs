//! Nodes sharing their state through etcd (`datastore = "etcd"`): etcd runs in a
//! namespace of its own on the underlay; every node is configured with only the
//! datastore, its endpoints, cluster_cidr, mode and uplink. Nodes claim distinct
//! blocks, learn each other from etcd, spread objects applied on one node to all,
//! keep forwarding while etcd is away, and withdraw a dead node's routes after its
//! lease expires.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{Node, Pod, Underlay};
use common::etcd::{etcd_node, have_etcd, Etcd};
use common::skip_unless_root;

fn skip() -> bool {
    if skip_unless_root() {
        return true;
    }
    if !have_etcd() {
        eprintln!("skipped: etcd is not installed (Debian etcd-server)");
        return true;
    }
    false
}

/// Starts `count` etcd nodes (indices 1..=count) and waits for each.
fn start_nodes(u: &Underlay, e: &Etcd, tag: &str, count: u8, mode: &str, ttl: u32) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=count)
        .map(|i| etcd_node(u, e, tag, i, mode, ttl))
        .collect();
    // Spawn all first: they claim blocks concurrently, as a real cluster boots.
    for n in &mut nodes {
        n.spawn();
    }
    for n in &mut nodes {
        n.wait_ready();
    }
    nodes
}

fn pod_cidr(n: &Node) -> String {
    n.status_json()["pod_cidr"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every pod pings every pod on another node (waiting for convergence).
fn full_mesh(nodes: &[Node], pods: &[Pod], e: &Etcd) {
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(
                a.ping_until(b.ip, Duration::from_secs(15)),
                "{} ({}) -> {} ({})\n{}\n{}",
                a.name,
                a.ip,
                b.name,
                b.ip,
                nodes
                    .iter()
                    .map(|n| format!("--- {}:\n{}", n.name, n.log()))
                    .collect::<String>(),
                e.logs()
            );
        }
    }
}

/// Four nodes, one pod each: distinct blocks, all pods reach all pods.
fn four_nodes(tag: &str, mode: &str) -> (Underlay, Etcd, Vec<Node>, Vec<Pod>) {
    let u = Underlay::new(tag);
    let e = Etcd::start(&u, tag, 1);
    let nodes = start_nodes(&u, &e, tag, 4, mode, 10);
    let cidrs: BTreeSet<String> = nodes.iter().map(pod_cidr).collect();
    assert_eq!(cidrs.len(), 4, "distinct blocks: {cidrs:?}");
    for c in &cidrs {
        assert!(c.starts_with("198.19.") && c.ends_with("/26"), "{c}");
    }
    let pods: Vec<Pod> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| n.add_pod(&format!("p{}", i + 1)))
        .collect();
    for (n, p) in nodes.iter().zip(&pods) {
        let cidr: common_prefix::Cidr = pod_cidr(n).parse().unwrap();
        assert!(
            cidr.contains(p.ip),
            "{} got {} outside {cidr:?}",
            p.name,
            p.ip
        );
    }
    full_mesh(&nodes, &pods, &e);
    (u, e, nodes, pods)
}

/// Whether a TCP connection from `from` to `to`:`port` gets the server's greeting.
fn tcp_ok(from: &Pod, to: &Pod, port: u16) -> bool {
    let server = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{}',{port}))\ns.listen(1)\ns.settimeout(3)\nc,_=s.accept()\nc.sendall(b'ok')\nc.close()\n",
        to.ip
    );
    let mut srv = to.ns.spawn("python3", &["-c", &server]);
    to.wait_listening("-ltn", port);
    let client = format!(
        "import socket\ns=socket.create_connection(('{}',{port}),timeout=1.5)\nassert s.recv(2)==b'ok'\n",
        to.ip
    );
    let ok = from.ns.exec("python3", &["-c", &client]).status.success();
    drop(srv.wait_timeout(Duration::from_millis(200)));
    ok
}

/// Polls `f` until it returns `want` or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

mod common_prefix {
    use std::net::Ipv4Addr;

    /// An IPv4 prefix as the tests read it from `sluicectl status`.
    #[derive(Debug)]
    pub struct Cidr(u32, u32);

    impl std::str::FromStr for Cidr {
        type Err = String;
        fn from_str(s: &str) -> Result<Cidr, String> {
            let (a, l) = s.split_once('/').ok_or(s.to_owned())?;
            let a: Ipv4Addr = a.parse().map_err(|_| s.to_owned())?;
            let l: u32 = l.parse().map_err(|_| s.to_owned())?;
            let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            Ok(Cidr(u32::from(a) & mask, mask))
        }
    }

    impl Cidr {
        pub fn contains(&self, ip: Ipv4Addr) -> bool {
            u32::from(ip) & self.1 == self.0
        }
    }
}

fn pod_yaml(name: &str, app: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n")
}

#[test]
fn four_nodes_vxlan_and_a_policy_applied_once() {
    if skip() {
        return;
    }
    let (_u, e, nodes, pods) = four_nodes("ev", "vxlan");
    // p2 serves; p3 is its client, p4 another pod. All open at first.
    let (srv, cli, oth) = (&pods[1], &pods[2], &pods[3]);
    assert!(tcp_ok(oth, srv, 7001), "open before any policy");
    // Applied once, on node1 (which holds none of these pods): labels and the
    // policy reach node2 (ingress of p2) through etcd; pod addresses come from
    // the endpoints the other nodes published.
    let docs = [
        pod_yaml("p2", "server"),
        pod_yaml("p3", "client"),
        pod_yaml("p4", "other"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: clients-only, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]}\n"
            .to_owned(),
    ]
    .join("---\n");
    let (ok, out) = nodes[0].apply(&docs);
    assert!(ok, "apply: {out}");
    assert!(
        eventually(Duration::from_secs(15), || !tcp_ok(oth, srv, 7002)),
        "p4 -> p2 still open after the policy\n{}",
        nodes[1].log()
    );
    assert!(
        tcp_ok(cli, srv, 7003),
        "p3 -> p2 allowed\n{}",
        nodes[1].log()
    );
    // Deleted once, open again everywhere.
    let p = nodes[3].dir.path().join("del.yaml");
    std::fs::write(
        &p,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: clients-only, namespace: default}\n",
    )
    .unwrap();
    let (ok, _, err) = nodes[3].ctl(&["delete", "-f", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        eventually(Duration::from_secs(15), || tcp_ok(oth, srv, 7004)),
        "p4 -> p2 open after the delete\n{}",
        nodes[1].log()
    );
    drop(e);
}

#[test]
fn four_nodes_ipip() {
    if skip() {
        return;
    }
    four_nodes("ei", "ipip");
}

#[test]
fn four_nodes_native() {
    if skip() {
        return;
    }
    four_nodes("en", "native");
}

fn routes_to(n: &Node, cidr: &str) -> bool {
    n.ctl_json("routes").as_array().is_some_and(|r| {
        r.iter()
            .any(|x| x["prefix"] == cidr && x["next_hop"] != "local")
    })
}

/// etcd away: forwarding goes on and ADD succeeds from claimed blocks; etcd
/// back: new pods reachable cluster-wide. A node killed for good: its routes
/// leave its peers after the lease TTL; its block stays reserved until
/// `sluicectl node remove`.
#[test]
fn etcd_outage_and_a_lost_node() {
    if skip() {
        return;
    }
    let tag = "eo";
    let u = Underlay::new(tag);
    let mut e = Etcd::start(&u, tag, 1);
    let mut nodes = start_nodes(&u, &e, tag, 3, "vxlan", 3);
    let a1 = nodes[0].add_pod("a1");
    let b1 = nodes[1].add_pod("b1");
    assert!(
        a1.ping_until(b1.ip, Duration::from_secs(15)),
        "{}",
        nodes[0].log()
    );

    e.stop();
    assert!(a1.ping(b1.ip, 3), "forwarding while etcd is away");
    let a2 = nodes[0].add_pod("a2");
    assert!(
        a2.ping_until(b1.ip, Duration::from_secs(10)),
        "new pod while etcd is away"
    );
    assert!(b1.ping(a2.ip, 2));

    e.restart();
    let c1 = nodes[2].add_pod("c1");
    for p in [&a1, &a2, &b1] {
        assert!(
            p.ping_until(c1.ip, Duration::from_secs(15)),
            "{} -> c1 after etcd returned\n{}",
            p.name,
            nodes[2].log()
        );
    }

    // node3 dies for good: after the TTL (3 s) its peers drop its block.
    let dead = pod_cidr(&nodes[2]);
    assert!(routes_to(&nodes[0], &dead));
    nodes[2].kill();
    assert!(
        eventually(Duration::from_secs(20), || !routes_to(&nodes[0], &dead)
            && !routes_to(&nodes[1], &dead)),
        "routes to {dead} withdrawn\n{}",
        nodes[0].log()
    );
    assert!(!a1.ping(c1.ip, 1));
    // Its block stays reserved until removed by hand.
    let (ok, out, err) = nodes[0].ctl(&["node", "remove", "node3"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&dead), "released {dead}: {out}");
}

/// A three-member etcd cluster: killing one member interrupts nothing.
#[test]
fn three_member_etcd_loses_one() {
    if skip() {
        return;
    }
    let tag = "e3";
    let u = Underlay::new(tag);
    let mut e = Etcd::start(&u, tag, 3);
    let nodes = start_nodes(&u, &e, tag, 2, "vxlan", 10);
    let a1 = nodes[0].add_pod("a1");
    let b1 = nodes[1].add_pod("b1");
    assert!(
        a1.ping_until(b1.ip, Duration::from_secs(15)),
        "{}",
        nodes[0].log()
    );
    let mut ping = a1.ns.spawn(
        "ping",
        &["-c", "30", "-i", "0.1", "-W", "1", &b1.ip.to_string()],
    );
    std::thread::sleep(Duration::from_millis(500));
    e.members[0].kill();
    let out = ping
        .wait_timeout(Duration::from_secs(15))
        .expect("ping ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");
    // The cluster still serves: a new pod is published and reachable.
    let b2 = nodes[1].add_pod("b2");
    assert!(
        a1.ping_until(b2.ip, Duration::from_secs(15)),
        "{}",
        nodes[0].log()
    );
    let peers = nodes[0].ctl_json("nodes");
    assert_eq!(peers[0]["source"], "etcd", "{peers}");
}

/// A node whose block is full claims another one (reachable from its peers at
/// once); with etcd away and every block full, ADD fails and says why.
#[test]
fn full_blocks_grow_and_fail_clearly_without_etcd() {
    if skip() {
        return;
    }
    let tag = "eg";
    let u = Underlay::new(tag);
    let mut e = Etcd::start(&u, tag, 1);
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let mut n = etcd_node(&u, &e, tag, i, "vxlan", 10);
            // Two addresses per block.
            n.extra_config += "block_size = 30\n";
            n
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let first: common_prefix::Cidr = pod_cidr(&nodes[0]).parse().unwrap();
    let x: Vec<Pod> = (1..=3)
        .map(|i| nodes[0].add_pod(&format!("x{i}")))
        .collect();
    assert!(!first.contains(x[2].ip), "x3 {} from a new block", x[2].ip);
    let y1 = nodes[1].add_pod("y1");
    assert!(
        y1.ping_until(x[2].ip, Duration::from_secs(15)),
        "y1 -> x3 in the new block\n{}",
        nodes[1].log()
    );

    e.stop();
    let _x4 = nodes[0].add_pod("x4");
    let ns = common::Netns::new(&common::unique("slegx5"));
    let netns = format!("/var/run/netns/{}", ns.name());
    let out = nodes[0].cni(
        "ADD",
        "ctr-x5",
        &netns,
        "eth0",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x5",
        &nodes[0].cni_config("1.1.0"),
    );
    assert_ne!(out.code, 0, "x5 needs a block: {}", out.stdout);
    assert!(
        out.stdout.contains("no free address") && out.stdout.contains("etcd"),
        "{}",
        out.stdout
    );
}

/// Sends ICMP echo requests every 2 ms to each address read from stdin until
/// one is answered; prints the milliseconds that took (-1 after 10 s).
const PROBER: &str = r#"
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xffff
def csum(b):
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    t += t >> 16
    return ~t & 0xffff
def echo(seq):
    h = struct.pack('!BBHHH', 8, 0, 0, ident, seq) + b'sluice-probe'
    return struct.pack('!BBHHH', 8, 0, csum(h), ident, seq) + b'sluice-probe'
seq = 0
for line in sys.stdin:
    ip = line.strip()
    t = time.monotonic()
    got = None
    while got is None and time.monotonic() - t < 10:
        seq = (seq + 1) & 0xffff
        s.sendto(echo(seq), (ip, 0))
        deadline = time.monotonic() + 0.002
        while got is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            d, a = s.recvfrom(2048)
            if a[0] == ip and d[20] == 0 and struct.unpack('!H', d[24:26])[0] == ident:
                got = time.monotonic()
    print('%.3f' % ((got - t) * 1000 if got else -1), flush=True)
"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `scripts/bench-convergence`: time from a CNI ADD on node1 to the first
/// answered ping from a pod on node2, over `SLUICE_BENCH_PODS` pods (50).
#[test]
#[ignore = "benchmark: run by scripts/bench-convergence"]
fn convergence_bench() {
    use std::io::{BufRead, BufReader, Write};
    if skip() {
        return;
    }
    let pods: usize = std::env::var("SLUICE_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let block: u8 = std::env::var("SLUICE_BENCH_BLOCK_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(26);
    let tag = "bc";
    let u = Underlay::new(tag);
    let e = Etcd::start(&u, tag, 1);
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let mut n = etcd_node(&u, &e, tag, i, "vxlan", 10);
            n.extra_config += &format!("block_size = {block}\n");
            n
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let probe = nodes[1].add_pod("probe");
    let warm = nodes[0].add_pod("warm");
    assert!(probe.ping_until(warm.ip, Duration::from_secs(15)));
    let mut prober = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            probe.ns.name(),
            "python3",
            "-u",
            "-c",
            PROBER,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("prober");
    let mut to = prober.stdin.take().unwrap();
    let mut from = BufReader::new(prober.stdout.take().unwrap());
    let mut add_ms = Vec::new();
    let mut total_ms = Vec::new();
    let mut keep = Vec::new();
    for i in 0..pods {
        // The pod's namespace exists before the clock starts, as with a runtime.
        let ns = common::Netns::new(&common::unique("slbcp"));
        let netns = format!("/var/run/netns/{}", ns.name());
        let t = Instant::now();
        let out = nodes[0].cni(
            "ADD",
            &format!("ctr-c{i}"),
            &netns,
            "eth0",
            &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=c{i}"),
            &nodes[0].cni_config("1.1.0"),
        );
        let add = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(out.code, 0, "ADD c{i}: {}", out.stdout);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("ADD result");
        let ip = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .unwrap_or_default()
            .to_owned();
        writeln!(to, "{ip}").unwrap();
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        let probe_ms: f64 = line.trim().parse().unwrap_or(-1.0);
        assert!(probe_ms >= 0.0, "c{i} {ip} never answered");
        add_ms.push(add);
        total_ms.push(add + probe_ms);
        keep.push(ns);
    }
    drop(to);
    let _ = prober.kill();
    let _ = prober.wait();
    add_ms.sort_by(f64::total_cmp);
    total_ms.sort_by(f64::total_cmp);
    let blocks = nodes[0].status_json()["pod_blocks"].clone();
    println!(
        "convergence: pods={pods} block_size={block} blocks_on_node1={} add_p50={:.2} add_p99={:.2} \
         p50={:.2} p99={:.2} max={:.2} (ms)",
        blocks.as_array().map_or(0, Vec::len),
        percentile(&add_ms, 0.5),
        percentile(&add_ms, 0.99),
        percentile(&total_ms, 0.5),
        percentile(&total_ms, 0.99),
        total_ms.last().copied().unwrap_or_default(),
    );
}

/// A node gone for longer than `node_grace_period_s` loses its block: the next
/// node to join claims it.
#[test]
fn grace_period_releases_a_dead_nodes_block() {
    if skip() {
        return;
    }
    let tag = "er";
    let u = Underlay::new(tag);
    let e = Etcd::start(&u, tag, 1);
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| {
            let mut n = etcd_node(&u, &e, tag, i, "vxlan", 2);
            n.extra_config += "node_grace_period_s = 2\n";
            n
        })
        .collect();
    for n in &mut nodes[..2] {
        n.start();
    }
    let dead = pod_cidr(&nodes[1]);
    nodes[1].kill();
    // Lease (2 s), then the grace period (2 s), checked every TTL by node1.
    assert!(
        eventually(Duration::from_secs(20), || nodes[0]
            .log()
            .contains("grace period over")),
        "{}",
        nodes[0].log()
    );
    nodes[2].start();
    assert_eq!(pod_cidr(&nodes[2]), dead, "{}", nodes[2].log());
}
