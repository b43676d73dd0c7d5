//! Two nodes as namespaces on a bridged underlay, sluiced in each, pods
//! attached through the CNI plugin: pod ↔ pod across nodes and on one node, in
//! every mode and on both uplink backends; the node reaching its pods; pods
//! reaching an address outside the cluster through the node's kernel.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::{two_peered_nodes, Node, Underlay};
use common::{skip_unless_root, skip_without, Netns};

fn pod_to_pod(mode: &str, backend: &str) {
    if skip_unless_root() {
        return;
    }
    let tag = &format!("{}{}", &mode[..2], &backend[..1]);
    let (_u, a, b) = two_peered_nodes(tag, mode, backend);
    let a1 = a.add_pod("a1");
    let a2 = a.add_pod("a2");
    let b1 = b.add_pod("b1");
    a1.assert_reaches(&b1, &a, &b);
    assert!(b1.ping(a1.ip, 2), "b1 -> a1");
    assert!(a1.ping(a2.ip, 2), "a1 -> a2 on one node");
    let bytes = a1.tcp_transfer(&b1, 2);
    assert!(bytes > 1e6, "TCP a1 -> b1 moved {bytes} bytes");
    let bytes = b1.tcp_transfer(&a2, 1);
    assert!(bytes > 1e6, "TCP b1 -> a2 moved {bytes} bytes");
    let stats = a.ctl_json("stats");
    let enc = match mode {
        "vxlan" => "vxlan_encap",
        "ipip" => "ipip_encap",
        _ => "native_out",
    };
    assert!(
        stats["counters"][enc].as_u64().unwrap_or(0) > 100,
        "{enc} counted: {stats}"
    );
    // Workers run below the pods' nice (default worker_nice), and say so.
    assert_eq!(a.worker_nices(), vec![-10], "worker threads of node A");
    let w = &stats["workers"][0];
    assert_eq!(w["nice"], -10, "{w}");
    assert!(w["last_error"].is_null(), "{w}");
}

#[test]
fn vxlan_socket() {
    pod_to_pod("vxlan", "socket");
}

#[test]
fn ipip_socket() {
    pod_to_pod("ipip", "socket");
}

#[test]
fn native_socket() {
    pod_to_pod("native", "socket");
}

#[test]
fn vxlan_af_xdp() {
    pod_to_pod("vxlan", "af_xdp");
}

#[test]
fn ipip_af_xdp() {
    pod_to_pod("ipip", "af_xdp");
}

#[test]
fn native_af_xdp() {
    pod_to_pod("native", "af_xdp");
}

/// `auto` on a veth uplink, whose driver offers AF_XDP no zero-copy (it says
/// so through netdev netlink): in VXLAN and native mode sluiced runs the
/// uplink on kernel sockets, which carry superframes whole, without
/// attaching an XDP program, and says why (native mode then takes pod traffic off the uplink as
/// a configured socket backend does); in IPIP mode, whose superframes no
/// socket carries, it keeps AF_XDP.
fn auto_backend(mode: &str, want: &str) {
    if skip_unless_root() {
        return;
    }
    let (_u, a, b) = two_peered_nodes(&format!("au{}", &mode[..1]), mode, "auto");
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    a1.assert_reaches(&b1, &a, &b);
    for n in [&a, &b] {
        let status = n.ctl_json("status");
        assert_eq!(status["backend"], want, "{status}");
        let reason = status["backend_reason"].as_str().unwrap_or_default();
        let link = n.ns.exec("ip", &["-d", "link", "show", "ul0"]);
        let link = String::from_utf8_lossy(&link.stdout);
        if want == "socket" {
            assert!(
                reason.starts_with(
                    "AF_XDP would only copy on ul0 (its driver offers no zero-copy), \
                     and sockets carry superframes whole; using kernel sockets"
                ),
                "{reason}"
            );
            assert!(
                !link.contains("prog/xdp"),
                "XDP program left attached:\n{link}"
            );
            if mode == "native" {
                assert!(reason.contains("taken off the uplink"), "{reason}");
            }
        } else {
            assert!(reason.starts_with("AF_XDP socket bound"), "{reason}");
            assert!(link.contains("prog/xdp"), "no XDP program on ul0:\n{link}");
        }
    }
    let bytes = a1.tcp_transfer(&b1, 1);
    assert!(bytes > 1e6, "TCP a1 -> b1 moved {bytes} bytes");
}

#[test]
fn auto_takes_sockets_where_af_xdp_would_copy() {
    auto_backend("vxlan", "socket");
}

#[test]
fn auto_takes_sockets_for_native_routing_too() {
    auto_backend("native", "socket");
}

#[test]
fn auto_keeps_af_xdp_for_ipip() {
    auto_backend("ipip", "af_xdp");
}

/// Packets the node's kernel dropped in sluiced's nftables table (its copies
/// of pod traffic the uplink socket took); `None` without the table.
fn native_drops(ns: &Netns) -> Option<u64> {
    let out = ns.exec("nft", &["list", "table", "ip", "sluice_native"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains("counter"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

/// Native routing on kernel sockets: the uplink socket takes pod traffic
/// itself and the node's kernel drops its own copy (nftables, ahead of NAT)
/// instead of forwarding it to the host port a second time. The table lives
/// as long as sluiced: a killed one's is replaced on restart, a stopped
/// one's is gone.
#[test]
fn native_socket_takes_pod_traffic_off_the_uplink() {
    if skip_unless_root() || skip_without("nft", "nftables") {
        return;
    }
    let (u, mut a, mut b) = two_peered_nodes("nsn", "native", "socket");
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    a1.assert_reaches(&b1, &a, &b);
    let reason = b.ctl_json("status")["backend_reason"].to_string();
    assert!(reason.contains("taken off the uplink"), "{reason}");
    let (drops, tx) = (
        native_drops(&b.ns).expect("table on B"),
        b.ns.link_counter("sluice0", "tx_packets"),
    );
    let out = a1.ns.exec(
        "ping",
        &["-c", "20", "-i", "0.01", "-W", "2", &b1.ip.to_string()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("DUP!"),
        "each request delivered once:\n{text}"
    );
    // B's kernel dropped its copy of each request, and forwarded none of
    // them to the host port.
    let dropped = native_drops(&b.ns).unwrap() - drops;
    assert!(dropped >= 20, "B's kernel dropped {dropped} copies");
    let forwarded = b.ns.link_counter("sluice0", "tx_packets") - tx;
    assert!(
        forwarded < 10,
        "B's kernel sent {forwarded} frames to its host port"
    );
    // Node to pod still goes through the host port.
    assert!(
        b.ns.exec("ping", &["-c", "2", "-W", "2", &b1.ip.to_string()])
            .status
            .success(),
        "node B -> b1"
    );

    // Outside the cluster through the same uplink: B masquerades, and the
    // replies, to B's own address until NAT turns them back, are not dropped.
    u.ns.exec_ok("ip", &["addr", "add", "198.18.0.99/24", "dev", "br0"]);
    b.ns.exec_ok("nft", &["add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post ip saddr 198.19.0.0/16 oifname ul0 masquerade"]);
    assert!(
        b1.ping_until(Ipv4Addr::new(198, 18, 0, 99), Duration::from_secs(5)),
        "b1 -> outside through B's uplink\n{}",
        b.log()
    );

    // Killed: the table stays (nothing forwards while sluiced is down);
    // restarted: replaced, one table, traffic flows again.
    b.kill();
    assert!(
        native_drops(&b.ns).is_some(),
        "table left by a killed sluiced"
    );
    b.start();
    let listed = b.ns.exec_ok("nft", &["list", "tables"]);
    assert_eq!(listed.matches("sluice_native").count(), 1, "{listed}");
    assert!(a1.ping_until(b1.ip, Duration::from_secs(10)), "{}", b.log());
    // Stopped: gone.
    b.stop();
    assert_eq!(native_drops(&b.ns), None, "table after a clean stop");
    a.stop();
    assert_eq!(native_drops(&a.ns), None);
}

/// Nodes learn their peers from Node objects applied with sluicectl (no
/// peers in the config); deleting the Node withdraws the route.
#[test]
fn peers_from_node_objects() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("ko");
    let mut a = Node::new(&u, "ko", 1, "vxlan", "socket");
    let mut b = Node::new(&u, "ko", 2, "vxlan", "socket");
    a.start();
    b.start();
    let nodes = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nspec: {podCIDR: 198.19.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: 198.18.0.1}]}\n---\n\
                 apiVersion: v1\nkind: Node\nmetadata: {name: node2}\nspec: {podCIDR: 198.19.2.0/24}\nstatus: {addresses: [{type: InternalIP, address: 198.18.0.2}]}\n";
    for n in [&a, &b] {
        let (ok, out) = n.apply(nodes);
        assert!(ok, "apply: {out}");
    }
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    assert!(a1.ping_until(b1.ip, Duration::from_secs(10)), "{}", a.log());
    let peers = a.ctl_json("nodes");
    assert_eq!(peers.as_array().map(Vec::len), Some(1), "{peers}");
    assert_eq!(peers[0]["source"], "api");
    // A bad document changes nothing and says what is wrong.
    let (ok, out) = a.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node3}\nspec: {}\n");
    assert!(!ok && out.contains("node3"), "{out}");
    // Deleting node2 withdraws its route; the state survives a restart.
    let p = a.dir.path().join("del.yaml");
    std::fs::write(&p, "apiVersion: v1\nkind: Node\nmetadata: {name: node2}\n").unwrap();
    let (ok, _, err) = a.ctl(&["delete", "-f", p.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!a1.ping(b1.ip, 1));
    let (ok, _) = a.apply(nodes);
    assert!(ok);
    a.kill();
    a.start();
    assert!(
        a1.ping_until(b1.ip, Duration::from_secs(10)),
        "peers restored from state"
    );
}
