//! A Sluice node against the world around it: a kernel-VXLAN peer (Flannel /
//! Calico VXLAN wiring), the node's own traffic and its path to its pods, pods
//! reaching outside the cluster through the node's kernel (SNAT), a SIGKILL
//! of sluiced under live pods, and a sluiced its service manager gave less
//! than it asks for.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::cluster::{two_peered_nodes, Node, Underlay};
use common::{skip_unless_root, skip_without, unique, Netns};

#[test]
fn kernel_vxlan_peer_interoperates() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("kx");
    let mut a = Node::new(&u, "kx", 1, "vxlan", "socket");
    // Node B is a kernel node: the Linux VXLAN device, static FDB and neighbour
    // entries, an onlink route (how Flannel and Calico VXLAN nodes are wired).
    let b = Node::new(&u, "kx", 2, "vxlan", "socket");
    let b_vtep = "02:5e:00:00:00:02";
    let a_vtep = "02:53:c6:12:00:01"; // Sluice's default VTEP MAC for 198.18.0.1
    let sh = |args: &[&str]| b.ns.exec_ok(args[0], &args[1..]);
    sh(&[
        "ip",
        "link",
        "add",
        "vx0",
        "address",
        b_vtep,
        "type",
        "vxlan",
        "id",
        "4096",
        "local",
        "198.18.0.2",
        "dstport",
        "4789",
        "dev",
        "ul0",
        "nolearning",
    ]);
    sh(&["ip", "link", "set", "vx0", "mtu", "1450", "up"]);
    sh(&["ip", "addr", "add", "198.19.2.0/32", "dev", "vx0"]);
    sh(&[
        "ip",
        "neigh",
        "add",
        "198.19.1.0",
        "lladdr",
        a_vtep,
        "dev",
        "vx0",
        "nud",
        "permanent",
    ]);
    sh(&[
        "bridge",
        "fdb",
        "append",
        a_vtep,
        "dev",
        "vx0",
        "dst",
        "198.18.0.1",
    ]);
    sh(&[
        "ip",
        "route",
        "add",
        "198.19.1.0/24",
        "via",
        "198.19.1.0",
        "dev",
        "vx0",
        "onlink",
    ]);
    sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // veth hands partially checksummed frames to its peer (a NIC would finish
    // them); make the kernel node finish them, as on a real wire.
    sh(&["ethtool", "-K", "ul0", "tx", "off"]);
    sh(&["ethtool", "-K", "vx0", "tx", "off"]);
    // A pod on B behind a veth, routed by B's kernel.
    let pb = Netns::new(&unique("slkxpb"));
    sh(&[
        "ip",
        "link",
        "add",
        "vpb",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pb.name(),
    ]);
    sh(&["ip", "addr", "add", "198.19.2.1/24", "dev", "vpb"]);
    sh(&["ip", "link", "set", "vpb", "mtu", "1450", "up"]);
    sh(&["ethtool", "-K", "vpb", "tx", "off"]);
    pb.exec_ok("ethtool", &["-K", "eth0", "tx", "off"]);
    pb.exec_ok("ip", &["addr", "add", "198.19.2.10/24", "dev", "eth0"]);
    pb.exec_ok("ip", &["link", "set", "eth0", "mtu", "1450", "up"]);
    pb.exec_ok("ip", &["route", "add", "default", "via", "198.19.2.1"]);

    // The peer's VTEP MAC comes from the config (a Node annotation would do too).
    a.extra_config = format!(
        "\n[[peers]]\nname = \"kernel-b\"\nnode_ip = \"198.18.0.2\"\npod_cidr = \"198.19.2.0/24\"\nvtep_mac = \"{b_vtep}\"\n"
    );
    a.start();
    let a1 = a.add_pod("a1");
    let kb = Ipv4Addr::new(198, 19, 2, 10);
    assert!(
        a1.ping_until(kb, Duration::from_secs(10)),
        "sluice pod -> kernel pod\n{}",
        a.log()
    );
    assert!(
        pb.exec("ping", &["-c", "2", "-W", "2", &a1.ip.to_string()])
            .status
            .success(),
        "kernel pod -> sluice pod"
    );
    // TCP both ways.
    let mut srv = pb.spawn("iperf3", &["-s", "-1", "-B", "198.19.2.10"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = a1
        .ns
        .exec("iperf3", &["-c", "198.19.2.10", "-t", "1", "-J"]);
    let _ = srv.wait_timeout(Duration::from_secs(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) > 1e5,
        "TCP sluice -> kernel: {v}"
    );
    let mut srv = a1
        .ns
        .spawn("iperf3", &["-s", "-1", "-B", &a1.ip.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let out = pb.exec("iperf3", &["-c", &a1.ip.to_string(), "-t", "1", "-J"]);
    let _ = srv.wait_timeout(Duration::from_secs(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) > 1e5,
        "TCP kernel -> sluice: {v}"
    );
    drop(pb);
}

#[test]
fn node_reaches_its_pods_and_pods_reach_outside() {
    if skip_unless_root() {
        return;
    }
    for backend in ["af_xdp", "socket"] {
        let tag = &format!("no{}", &backend[..1]);
        let u = Underlay::new(tag);
        let mut a = Node::new(&u, tag, 1, "vxlan", backend);
        let b = Node::new(&u, tag, 2, "vxlan", backend);
        a.start();
        let a1 = a.add_pod("a1");
        // The node's own traffic on the uplink is untouched while sluiced runs.
        assert!(
            a.ns.exec("ping", &["-c", "2", "-W", "2", "198.18.0.2"])
                .status
                .success(),
            "node ping ({backend})"
        );
        let mut srv = b.ns.spawn("iperf3", &["-s", "-1", "-B", "198.18.0.2"]);
        std::thread::sleep(Duration::from_millis(300));
        let out = a.ns.exec("iperf3", &["-c", "198.18.0.2", "-t", "1", "-J"]);
        let _ = srv.wait_timeout(Duration::from_secs(2));
        assert!(
            out.status.success(),
            "node TCP ({backend}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The node reaches its pod (kubelet probes): ping and a TCP connection.
        assert!(
            a.ns.exec("ping", &["-c", "2", "-W", "2", &a1.ip.to_string()])
                .status
                .success(),
            "node -> pod\n{}",
            a.log()
        );
        let mut srv = a1
            .ns
            .spawn("iperf3", &["-s", "-1", "-B", &a1.ip.to_string()]);
        std::thread::sleep(Duration::from_millis(300));
        let out =
            a.ns.exec("iperf3", &["-c", &a1.ip.to_string(), "-t", "1", "-J"]);
        let _ = srv.wait_timeout(Duration::from_secs(2));
        assert!(
            out.status.success(),
            "node TCP -> pod ({backend}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // An 'outside' network behind the node, which masquerades pod traffic.
        let out_ns = Netns::new(&unique(&format!("sl{tag}out")));
        a.ns.exec_ok(
            "ip",
            &[
                "link",
                "add",
                "ext0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                out_ns.name(),
            ],
        );
        a.ns.exec_ok("ip", &["addr", "add", "198.18.99.1/24", "dev", "ext0"]);
        a.ns.exec_ok("ip", &["link", "set", "ext0", "up"]);
        out_ns.exec_ok("ip", &["addr", "add", "198.18.99.2/24", "dev", "eth0"]);
        out_ns.exec_ok("ip", &["link", "set", "eth0", "up"]);
        a.ns.exec_ok("nft", &["add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post ip saddr 198.19.0.0/16 oifname ext0 masquerade"]);
        assert!(
            a1.ping_until(Ipv4Addr::new(198, 18, 99, 2), Duration::from_secs(5)),
            "pod -> outside ({backend})\n{}",
            a.log()
        );
        let mut srv = out_ns.spawn("iperf3", &["-s", "-1", "-B", "198.18.99.2"]);
        std::thread::sleep(Duration::from_millis(300));
        let out = a1
            .ns
            .exec("iperf3", &["-c", "198.18.99.2", "-t", "1", "-J"]);
        let _ = srv.wait_timeout(Duration::from_secs(2));
        assert!(
            out.status.success(),
            "pod TCP -> outside ({backend}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn sigkill_keeps_pods_and_restart_resumes_traffic() {
    if skip_unless_root() {
        return;
    }
    let (_u, mut a, b) = two_peered_nodes("rs", "vxlan", "socket");
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    assert!(a1.ping_until(b1.ip, Duration::from_secs(10)));
    let before = a1
        .ns
        .exec_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    // Without sluiced holding the TAP its carrier is down ("linkdown"); the
    // routes themselves stay.
    let routes = |p: &common::cluster::Pod| p.ns.exec_ok("ip", &["route"]).replace(" linkdown", "");
    let routes_before = routes(&a1);
    a.kill();
    // The pod keeps its interface, address and routes with sluiced gone.
    assert_eq!(
        a1.ns
            .exec_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]),
        before
    );
    assert_eq!(routes(&a1), routes_before);
    assert!(!a1.ping(b1.ip, 1), "traffic while sluiced is down");
    // CNI ADD during the outage: try again later (11), nothing changed.
    let pod_ns = Netns::new(&unique("slrsp"));
    let out = a.cni(
        "ADD",
        "ctr-outage",
        &format!("/var/run/netns/{}", pod_ns.name()),
        "eth0",
        "",
        &a.cni_config("1.1.0"),
    );
    assert_ne!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["code"], 11, "{}", out.stdout);
    assert!(
        !pod_ns
            .exec("ip", &["link", "show", "eth0"])
            .status
            .success(),
        "half-made interface"
    );
    // Restart: traffic resumes with no change inside the pod.
    let t = Instant::now();
    a.start();
    let ready = t.elapsed();
    assert!(
        a1.ping_until(b1.ip, Duration::from_secs(10)),
        "after restart\n{}",
        a.log()
    );
    let resumed = t.elapsed();
    eprintln!(
        "resume gap: API ready {ready:?} after the restart began, traffic resumed {resumed:?} \
         after it ({:?} after ready)",
        resumed - ready
    );
    assert_eq!(
        a1.ns
            .exec_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"]),
        before
    );
    let eps = a.ctl_json("endpoints");
    assert_eq!(eps.as_array().map(Vec::len), Some(1), "{eps}");
    assert_eq!(eps[0]["attached"], true);
    // The same address is not handed to a new pod.
    let a2 = a.add_pod("a2");
    assert_ne!(a2.ip, a1.ip);
    // The ADD refused during the outage succeeds when the runtime retries it.
    let out = a.cni(
        "ADD",
        "ctr-outage",
        &format!("/var/run/netns/{}", pod_ns.name()),
        "eth0",
        "",
        &a.cni_config("1.1.0"),
    );
    assert_eq!(out.code, 0, "retried ADD: {}{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let retried = v["ips"][0]["address"].as_str().unwrap_or_default();
    for held in [a1.ip, a2.ip] {
        assert!(
            !retried.starts_with(&format!("{held}/")),
            "{retried} reused"
        );
    }
    assert!(pod_ns
        .exec("ip", &["link", "show", "eth0"])
        .status
        .success());
    // SIGTERM: clean stop, TAPs stay.
    assert!(a.stop().is_some_and(|s| s.success()), "{}", a.log());
    assert!(a1.ns.exec("ip", &["link", "show", "eth0"]).status.success());
}

/// Without `CAP_SYS_NICE` (a unit that leaves it out) the workers cannot go
/// below the pods' nice: sluiced says so in its log and in `stats`, and
/// forwards all the same.
#[test]
fn without_cap_sys_nice_workers_warn_and_forward() {
    if skip_unless_root() {
        return;
    }
    if skip_without("setpriv", "util-linux") {
        return;
    }
    let u = Underlay::new("cn");
    let mut a = Node::new(&u, "cn", 1, "vxlan", "socket");
    let mut b = Node::new(&u, "cn", 2, "vxlan", "socket");
    a.peers.push((b.name.clone(), b.ip, b.pod_cidr.clone()));
    b.peers.push((a.name.clone(), a.ip, a.pod_cidr.clone()));
    a.wrapper = ["setpriv", "--bounding-set", "-sys_nice"]
        .map(String::from)
        .to_vec();
    a.start();
    b.start();
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    assert!(
        a1.ping_until(b1.ip, Duration::from_secs(10)),
        "a1 -> b1\nA:\n{}",
        a.log()
    );
    let inherited = a.worker_nices();
    assert_eq!(inherited.len(), 1);
    assert!(
        inherited[0] > -10,
        "worker nice {inherited:?} without the capability"
    );
    assert_eq!(b.worker_nices(), vec![-10], "node B kept it");
    let w = &a.ctl_json("stats")["workers"][0];
    assert_eq!(w["nice"], inherited[0], "{w}");
    assert!(
        w["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("set nice -10")),
        "{w}"
    );
    let log = a.log();
    assert!(
        log.contains("worker 0: set nice -10") && log.contains("CAP_SYS_NICE"),
        "{log}"
    );
}

/// Whether a Sluice XDP program is attached to the node's uplink.
fn xdp_on_uplink(node: &Node) -> bool {
    let link = node.ns.exec_ok("ip", &["-d", "link", "show", "ul0"]);
    link.contains("prog/xdp")
}

/// A node that ran AF_XDP and was killed leaves its XDP program on the
/// uplink (harmless: without its socket it passes every frame on). Started
/// again on kernel sockets, sluiced removes it; started on `auto`, which
/// takes sockets on a copy-only driver without attaching anything, too.
#[test]
fn a_program_a_killed_af_xdp_run_left_goes_when_sockets_take_over() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("sx");
    let mut a = Node::new(&u, "sx", 1, "vxlan", "af_xdp");
    for (runs, next) in ["socket", "auto"].into_iter().enumerate() {
        a.backend = "af_xdp".into();
        a.start();
        assert!(xdp_on_uplink(&a), "AF_XDP run: no program\n{}", a.log());
        a.kill();
        assert!(xdp_on_uplink(&a), "a killed run's program stays");
        a.backend = next.into();
        a.start();
        assert_eq!(a.ctl_json("status")["backend"], "socket");
        assert!(!xdp_on_uplink(&a), "{next}: program left\n{}", a.log());
        let said = a
            .log()
            .matches("removed a stale Sluice XDP program")
            .count();
        assert_eq!(said, runs + 1, "{}", a.log());
        a.kill();
    }
}
