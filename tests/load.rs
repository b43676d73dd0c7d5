//! Load (issue 8, item 9): 500 pods on one node, each a network namespace
//! attached through the CNI plugin in parallel batches, traffic in a sample of
//! pairs, then every pod deleted; twice, measuring the second cycle. sluiced's open descriptors, allocations and
//! TAPs must come back exactly to where they were, its memory within a small
//! slack; the figures are printed (RELIABILITY.md records them).

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::cluster::{Node, Underlay};
use common::{skip_unless_root, unique, Netns};
use sluice_dataplane::sys::netns::{in_netns, NetNs};

const PODS: usize = 500;
/// Parallel CNI invocations, as a kubelet starting many pods at once.
const PARALLEL: usize = 16;
/// Pairs of pods that exchange traffic.
const PAIRS: usize = 20;
/// RSS growth tolerated across the 500-pod cycle (allocator caches, table
/// capacity kept from the peak).
const RSS_SLACK_KIB: u64 = 16 * 1024;

/// What the node holds, from outside the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Figures {
    fds: usize,
    rss_kib: u64,
    threads: u64,
    endpoints: usize,
    addresses_free: u64,
}

fn status_field(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("sluiced status");
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("sluiced fds")
        .count()
}

/// The descriptor count once it has settled: the API server closes a
/// client's connection when it reads the client's end-of-file, a moment
/// after the client got its answer, so the last few requests' sockets may
/// still be open right after they returned. Waits (at most 5 s) for the
/// count to stay the same for 300 ms.
fn settled_fds(pid: u32) -> usize {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let mut last = fd_count(pid);
    let mut stable_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let n = fd_count(pid);
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= std::time::Duration::from_millis(300) {
            break;
        }
    }
    last
}

fn figures(node: &Node) -> Figures {
    let pid = node.pid().expect("sluiced running");
    Figures {
        fds: settled_fds(pid),
        rss_kib: status_field(pid, "VmRSS:"),
        threads: status_field(pid, "Threads:"),
        endpoints: node.endpoints().len(),
        addresses_free: node.addresses_free(),
    }
}

/// A pod made here: its namespace guard, container id and address.
struct LoadPod {
    ns: Netns,
    cid: String,
    ip: Ipv4Addr,
}

/// Whether `eth0` exists in the pod's namespace (asked in-process).
fn has_eth0(ns: &Netns) -> bool {
    let handle = NetNs::open(format!("/var/run/netns/{}", ns.name())).expect("pod netns");
    in_netns(&handle, || nix::net::if_::if_nametoindex("eth0").is_ok()).unwrap_or(false)
}

/// Creates `n` pod namespaces and ADDs them, `PARALLEL` at a time.
fn add_pods(node: &Node, tag: &str, n: usize) -> Vec<LoadPod> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(n));
    let config = node.cni_config("1.1.0");
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let ns = Netns::new(&unique(&format!("sl{tag}")));
                let cid = format!("load-{tag}-{i}");
                let netns = format!("/var/run/netns/{}", ns.name());
                let r = node.cni("ADD", &cid, &netns, "eth0", "IgnoreUnknown=1", &config);
                assert_eq!(r.code, 0, "ADD {cid}: {}{}", r.stdout, r.stderr);
                let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("ADD JSON");
                let ip = v["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse().ok())
                    .expect("ADD address");
                out.lock().unwrap().push(LoadPod { ns, cid, ip });
            });
        }
    });
    out.into_inner().unwrap()
}

/// DELs every pod, `PARALLEL` at a time.
fn del_pods(node: &Node, pods: &[LoadPod]) {
    let next = AtomicUsize::new(0);
    let config = node.cni_config("1.1.0");
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = pods.get(i) else { return };
                let netns = format!("/var/run/netns/{}", p.ns.name());
                let r = node.cni("DEL", &p.cid, &netns, "eth0", "IgnoreUnknown=1", &config);
                assert_eq!(r.code, 0, "DEL {}: {}{}", p.cid, r.stdout, r.stderr);
            });
        }
    });
}

#[test]
fn five_hundred_pods_attach_talk_and_leave_nothing_behind() {
    if skip_unless_root() {
        return;
    }
    let t0 = Instant::now();
    let u = Underlay::new("ld");
    let mut node = Node::new(&u, "ld", 1, "vxlan", "socket");
    // Room for 500 pods: a /22 (1022 addresses).
    node.pod_cidr = "198.19.4.0/22".into();
    node.start();

    // Warm-up: a first full cycle, so that what a node keeps once it has held
    // 500 pods (table and map capacity, the allocator's free memory, metrics
    // families) is in the baseline; a leak grows again in the measured cycle.
    let start = figures(&node);
    let warm = add_pods(&node, "ldw", PODS);
    del_pods(&node, &warm);
    drop(warm);
    let before = figures(&node);
    eprintln!("load: start  {start:?}");
    eprintln!("load: after the warm-up cycle {before:?}");
    assert_eq!(before.fds, start.fds, "descriptors after the warm-up cycle");
    assert_eq!(before.addresses_free, start.addresses_free);

    let t_add = Instant::now();
    let pods = add_pods(&node, "ldp", PODS);
    let add_s = t_add.elapsed().as_secs_f64();
    let peak = figures(&node);
    assert_eq!(peak.endpoints, before.endpoints + PODS, "{peak:?}");
    assert_eq!(peak.addresses_free, before.addresses_free - PODS as u64);
    let mut ips: Vec<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), PODS, "distinct addresses");
    assert!(pods.iter().all(|p| has_eth0(&p.ns)), "every pod has eth0");

    // Traffic in a sample of pairs spread over the whole set.
    let t_ping = Instant::now();
    let step = PODS / PAIRS;
    for k in 0..PAIRS {
        let (a, b) = (&pods[k * step], &pods[(k * step + step / 2 + 7) % PODS]);
        let out = a.ns.exec(
            "ping",
            &["-c", "2", "-i", "0.2", "-W", "2", &b.ip.to_string()],
        );
        assert!(
            out.status.success(),
            "{} -> {}: {}\n{}",
            a.ip,
            b.ip,
            String::from_utf8_lossy(&out.stdout),
            node.log()
        );
    }
    let ping_s = t_ping.elapsed().as_secs_f64();

    let t_del = Instant::now();
    del_pods(&node, &pods);
    let del_s = t_del.elapsed().as_secs_f64();
    let left: Vec<&str> = pods
        .iter()
        .filter(|p| has_eth0(&p.ns))
        .map(|p| p.cid.as_str())
        .collect();
    assert!(left.is_empty(), "TAPs left after DEL: {left:?}");
    // Give the workers a moment to drop their last references to removed ports.
    std::thread::sleep(Duration::from_millis(300));
    let after = figures(&node);
    let names: Vec<String> = pods.iter().map(|p| p.ns.name().to_owned()).collect();
    drop(pods);
    let netns_left = names
        .iter()
        .filter(|n| std::path::Path::new(&format!("/var/run/netns/{n}")).exists())
        .count();

    eprintln!(
        "load: {PODS} pods, {PARALLEL} parallel: ADD {add_s:.1}s ({:.1} ms/pod wall), \
         {PAIRS} pairs pinged in {ping_s:.1}s, DEL {del_s:.1}s; total {:.1}s",
        add_s * 1000.0 / PODS as f64,
        t0.elapsed().as_secs_f64()
    );
    eprintln!("load: before {before:?}");
    eprintln!("load: peak   {peak:?}");
    eprintln!("load: after  {after:?}");
    assert_eq!(after.fds, before.fds, "open descriptors");
    assert_eq!(after.endpoints, before.endpoints, "endpoint records");
    assert_eq!(after.addresses_free, before.addresses_free, "allocations");
    assert_eq!(after.threads, before.threads, "threads");
    assert!(
        after.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
        "RSS grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    assert_eq!(netns_left, 0, "pod namespaces left");
    // The daemon is still the one that started, and serves.
    assert!(node.ctl(&["status"]).0);
}
