//! The CNI plugin executed exactly as a container runtime executes it
//! (environment plus stdin, result on stdout) against a running sluiced: ADD,
//! CHECK, DEL, VERSION, STATUS and GC, results checked field by field in three
//! specification versions against what is really in the pod, idempotent and
//! failed operations, 64 pods added and deleted in parallel, and one test per
//! error code asserting the code, the message and that nothing was left behind.
//!
//! Needs root (namespaces, TAP devices); skips with a message otherwise. Build
//! the binaries first: `cargo build --workspace --bins`.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::cluster::{cni_exec, links_in, CniOutcome, Node, NodeHoldings, Underlay};
use common::{skip_unless_root, Netns};
use serde_json::{json, Value};

/// Where Sluice's pods find their gateway (answered by the dataplane).
const GATEWAY: &str = "169.254.1.1";

/// A namespace name no other test uses: `slc` + `tag` + process id + counter.
/// A counter of its own (not the shared 8-bit one) so that the 64-pod test
/// cannot wrap around onto a namespace that is still in use.
fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only uniqueness matters.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("slc{tag}{:x}x{n:x}", std::process::id())
}

/// A pod namespace as a runtime makes one before calling ADD.
fn pod_netns(tag: &str) -> (Netns, String) {
    let ns = Netns::new(&unique_name(tag));
    let path = format!("/var/run/netns/{}", ns.name());
    (ns, path)
}

/// One node with sluiced running.
fn one_node(tag: &str) -> (Underlay, Node) {
    let u = Underlay::new(tag);
    let mut node = Node::new(&u, tag, 1, "vxlan", "socket");
    node.start();
    (u, node)
}

/// The configuration with `prevResult` set, as runtimes send it for CHECK and DEL.
fn with_prev(config: &str, prev: &Value) -> String {
    let mut conf: Value = serde_json::from_str(config).expect("config JSON");
    conf["prevResult"] = prev.clone();
    conf.to_string()
}

fn ok_json(out: &CniOutcome, what: &str) -> Value {
    assert_eq!(out.code, 0, "{what}: {}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: result is not JSON ({e}): {:?}", out.stdout))
}

fn ok_empty(out: &CniOutcome, what: &str) {
    assert_eq!(out.code, 0, "{what}: {}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), "", "{what} prints nothing on success");
}

/// Asserts a failure: exit status, code, the version it answers in, and every
/// `needles` in the message. Returns the message.
fn assert_error(out: &CniOutcome, code: u64, version: &str, needles: &[&str]) -> String {
    assert_ne!(
        out.code, 0,
        "expected CNI error {code}, got success: {}",
        out.stdout
    );
    let err = out.error();
    assert_eq!(err["code"], code, "error code in {err}");
    assert_eq!(err["cniVersion"], version, "error cniVersion in {err}");
    let msg = err["msg"]
        .as_str()
        .unwrap_or_else(|| panic!("msg in {err}"))
        .to_owned();
    for needle in needles {
        assert!(
            msg.contains(needle),
            "{needle:?} not in the message {msg:?}"
        );
    }
    msg
}

/// `ip -j ARGS` inside `ns`, parsed.
fn ip_json(ns: &Netns, args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&ns.exec_ok("ip", &full)).expect("ip -j JSON")
}

/// Whether `ifname` exists in `ns`.
fn has_link(ns: &Netns, ifname: &str) -> bool {
    links_in(ns).iter().any(|l| l == ifname)
}

/// The pod side as ADD must leave it: the interface up with the MAC, MTU and
/// the configured TAP queue (default 4096, the kernel's is 1000), the address
/// as a /32, the gateway as a scope-link route and the default route through
/// it.
fn assert_pod_wired(ns: &Netns, ifname: &str, ip: Ipv4Addr, mac: &str, mtu: u64) {
    let link = &ip_json(ns, &["link", "show", "dev", ifname])[0];
    assert!(
        link["address"]
            .as_str()
            .unwrap_or("")
            .eq_ignore_ascii_case(mac),
        "MAC of {ifname}: {link}"
    );
    assert_eq!(link["mtu"], mtu, "MTU of {ifname}: {link}");
    assert_eq!(link["txqlen"], 4096, "txqueuelen of {ifname}: {link}");
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    assert!(up, "{ifname} is up: {link}");

    let addrs = &ip_json(ns, &["addr", "show", "dev", ifname])[0]["addr_info"];
    let v4: Vec<&Value> = addrs
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(v4.len(), 1, "one IPv4 address on {ifname}: {addrs}");
    assert_eq!(
        v4[0]["local"],
        ip.to_string(),
        "address on {ifname}: {addrs}"
    );
    assert_eq!(v4[0]["prefixlen"], 32, "prefix length on {ifname}: {addrs}");

    let routes = ip_json(ns, &["-4", "route", "show"]);
    let routes = routes.as_array().unwrap();
    let gw = routes
        .iter()
        .any(|r| r["dst"] == GATEWAY && r["dev"] == ifname && r["scope"] == "link");
    assert!(gw, "scope-link route to {GATEWAY} on {ifname}: {routes:?}");
    let default = routes
        .iter()
        .any(|r| r["dst"] == "default" && r["gateway"] == GATEWAY && r["dev"] == ifname);
    assert!(
        default,
        "default route via {GATEWAY} on {ifname}: {routes:?}"
    );
}

/// Checks an ADD result field by field against the request, the node and what
/// is really in the pod; returns the pod's address.
fn assert_add_result(
    r: &Value,
    version: &str,
    ifname: &str,
    netns: &str,
    node: &Node,
    ns: &Netns,
) -> Ipv4Addr {
    assert_eq!(r["cniVersion"], version, "{r}");

    let interfaces = r["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("interfaces in {r}"));
    assert_eq!(interfaces.len(), 1, "{r}");
    let i = &interfaces[0];
    assert_eq!(i["name"], ifname, "interfaces[0].name is CNI_IFNAME: {r}");
    assert_eq!(
        i["sandbox"], netns,
        "interfaces[0].sandbox is CNI_NETNS: {r}"
    );
    let mac = i["mac"]
        .as_str()
        .unwrap_or_else(|| panic!("interfaces[0].mac in {r}"));
    assert_eq!(mac.len(), 17, "{mac}");
    let pod_mtu = node.pod_mtu();
    if version == "1.1.0" {
        assert_eq!(i["mtu"], pod_mtu, "interfaces[0].mtu in 1.1.0: {r}");
    } else {
        assert!(
            i.get("mtu").is_none(),
            "no interfaces[0].mtu before 1.1.0: {r}"
        );
    }

    let ips = r["ips"].as_array().unwrap_or_else(|| panic!("ips in {r}"));
    assert_eq!(ips.len(), 1, "{r}");
    let a = &ips[0];
    let cidr = a["address"]
        .as_str()
        .unwrap_or_else(|| panic!("ips[0].address in {r}"));
    let (addr, len) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("{cidr} is a CIDR"));
    assert_eq!(len, "32", "a /32: {cidr}");
    let ip: Ipv4Addr = addr.parse().unwrap_or_else(|_| panic!("{cidr} is IPv4"));
    let net: Ipv4Addr = node.pod_cidr.split('/').next().unwrap().parse().unwrap();
    assert_eq!(node.pod_cidr.split('/').nth(1), Some("24"));
    assert_eq!(
        ip.octets()[..3],
        net.octets()[..3],
        "{ip} is inside the node's pod CIDR {}",
        node.pod_cidr
    );
    assert_ne!(ip, net, "the network address is not handed out");
    assert_eq!(a["gateway"], GATEWAY, "{r}");
    assert_eq!(a["interface"], 0, "{r}");
    if version == "0.4.0" {
        assert_eq!(a["version"], "4", "ips[0].version in 0.4.0: {r}");
    } else {
        assert!(
            a.get("version").is_none(),
            "no ips[0].version from 1.0.0 on: {r}"
        );
    }

    let routes = r["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("routes in {r}"));
    assert!(
        routes.iter().any(|rt| rt["dst"] == "0.0.0.0/0"),
        "a default route in {r}"
    );

    assert_pod_wired(ns, ifname, ip, mac, pod_mtu);
    ip
}

/// After DEL: no interface in the pod, no record, the address back in the pool.
fn assert_released(
    node: &Node,
    ns: Option<&Netns>,
    container_id: &str,
    ifname: &str,
    free_before: u64,
) {
    if let Some(ns) = ns {
        assert!(
            !has_link(ns, ifname),
            "{ifname} is gone from the pod: {:?}",
            links_in(ns)
        );
    }
    let held = node.holdings();
    assert!(
        !held.endpoints.iter().any(|(c, _)| c == container_id),
        "no record for {container_id}: {:?}",
        held.endpoints
    );
    assert_eq!(
        held.addresses_free, free_before,
        "the address is free again"
    );
    assert!(
        held.taps.is_empty(),
        "no pod TAP left in the node: {:?}",
        held.taps
    );
}

#[test]
fn add_check_del_in_each_version() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("ver");
    let free0 = node.addresses_free();
    for (n, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let (ns, netns) = pod_netns("v");
        let cid = format!("ctr-{}-{n}", unique_name(""));
        let ifname = "eth0";
        let config = node.cni_config(version);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{n};K8S_POD_UID=uid-{n}"
        );

        let out = node.cni("ADD", &cid, &netns, ifname, &args, &config);
        let r = ok_json(&out, &format!("ADD in {version}"));
        let ip = assert_add_result(&r, version, ifname, &netns, &node, &ns);
        assert_eq!(node.addresses_free(), free0 - 1, "one address taken");
        let rec = node
            .endpoints()
            .into_iter()
            .find(|e| e["container_id"] == cid.as_str());
        let rec = rec.unwrap_or_else(|| panic!("a record for {cid}"));
        assert_eq!(rec["ip"], ip.to_string());
        assert_eq!(rec["netns"], netns.as_str());
        assert_eq!(rec["pod"], format!("web-{n}"));
        assert_eq!(rec["namespace"], "default");
        assert_eq!(rec["attached"], true);

        let out = node.cni(
            "CHECK",
            &cid,
            &netns,
            ifname,
            &args,
            &with_prev(&config, &r),
        );
        ok_empty(&out, &format!("CHECK in {version}"));

        // DEL with the cached result as runtimes send it, then once more without.
        let out = node.cni("DEL", &cid, &netns, ifname, &args, &with_prev(&config, &r));
        ok_empty(&out, &format!("DEL in {version}"));
        assert_released(&node, Some(&ns), &cid, ifname, free0);
        let out = node.cni("DEL", &cid, &netns, ifname, &args, &config);
        ok_empty(&out, &format!("second DEL in {version}"));
        assert_released(&node, Some(&ns), &cid, ifname, free0);
    }
    // A DEL without CNI_NETNS (allowed by the specification) of something never added.
    let out = cni_exec(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "never-added"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ],
        &node.cni_config("1.1.0"),
    );
    ok_empty(&out, "DEL of an unknown attachment");
}

#[test]
fn add_with_other_ifname_and_custom_mtu() {
    if skip_unless_root() {
        return;
    }
    // A node with its own TAP queue length too: pod and host TAP get it (2000
    // is neither the default 4096 nor the kernel's 1000, so only the setting
    // can have put it there).
    let u = Underlay::new("ifn");
    let mut node = Node::new(&u, "ifn", 1, "vxlan", "socket");
    node.extra_config += "tap_queue_len = 2000\n";
    node.start();
    let host = &ip_json(&node.ns, &["link", "show", "dev", "sluice0"])[0];
    assert_eq!(host["txqlen"], 2000, "host TAP: {host}");
    let (ns, netns) = pod_netns("i");
    let cid = unique_name("ctr");
    let mut conf: Value = serde_json::from_str(&node.cni_config("1.1.0")).unwrap();
    conf["mtu"] = json!(1400);
    let out = node.cni("ADD", &cid, &netns, "net1", "", &conf.to_string());
    let r = ok_json(&out, "ADD net1 with mtu 1400");
    assert_eq!(r["interfaces"][0]["name"], "net1");
    assert_eq!(r["interfaces"][0]["mtu"], 1400);
    let link = &ip_json(&ns, &["link", "show", "dev", "net1"])[0];
    assert_eq!(link["mtu"], 1400, "{link}");
    assert_eq!(link["txqlen"], 2000, "{link}");
    let out = node.cni(
        "CHECK",
        &cid,
        &netns,
        "net1",
        "",
        &with_prev(&conf.to_string(), &r),
    );
    ok_empty(&out, "CHECK net1");
    ok_empty(
        &node.cni("DEL", &cid, &netns, "net1", "", &conf.to_string()),
        "DEL net1",
    );
    assert!(!has_link(&ns, "net1"));
}

#[test]
fn version_and_status() {
    if skip_unless_root() {
        return;
    }
    // VERSION needs nothing but the command; runtimes send {"cniVersion": ...} on stdin.
    for stdin in ["", r#"{"cniVersion":"0.4.0"}"#] {
        let out = cni_exec(&[("CNI_COMMAND", "VERSION")], stdin);
        let v = ok_json(&out, "VERSION");
        assert_eq!(v["cniVersion"], "1.1.0", "{v}");
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(supported.contains(&version), "{version} in {v}");
        }
    }
    let (_u, node) = one_node("sta");
    let out = cni_exec(&[("CNI_COMMAND", "STATUS")], &node.cni_config("1.1.0"));
    ok_empty(&out, "STATUS with sluiced running");
    // STATUS is a 1.1.0 command.
    let out = cni_exec(&[("CNI_COMMAND", "STATUS")], &node.cni_config("1.0.0"));
    assert_error(&out, 1, "1.0.0", &["STATUS", "1.1.0"]);
}

#[test]
fn check_fails_once_the_pod_is_changed() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("chk");
    let free0 = node.addresses_free();
    let (ns, netns) = pod_netns("c");
    let cid = unique_name("ctr");
    let config = node.cni_config("1.1.0");
    let r = ok_json(&node.cni("ADD", &cid, &netns, "eth0", "", &config), "ADD");
    let ip = assert_add_result(&r, "1.1.0", "eth0", &netns, &node, &ns);
    let check = || node.cni("CHECK", &cid, &netns, "eth0", "", &with_prev(&config, &r));
    ok_empty(&check(), "CHECK before any change");

    // CHECK without prevResult is a configuration error.
    let out = node.cni("CHECK", &cid, &netns, "eth0", "", &config);
    assert_error(&out, 7, "1.1.0", &["prevResult"]);
    // A prevResult naming another namespace.
    let mut other = r.clone();
    other["interfaces"][0]["sandbox"] = json!("/var/run/netns/elsewhere");
    let out = node.cni(
        "CHECK",
        &cid,
        &netns,
        "eth0",
        "",
        &with_prev(&config, &other),
    );
    assert_error(&out, 107, "1.1.0", &["/var/run/netns/elsewhere", &netns]);

    // Someone deletes the pod's address.
    ns.exec_ok("ip", &["addr", "del", &format!("{ip}/32"), "dev", "eth0"]);
    let msg = assert_error(&check(), 107, "1.1.0", &[&ip.to_string(), "eth0"]);
    assert!(msg.contains("does not hold"), "{msg}");
    // ... and then the interface.
    ns.exec_ok("ip", &["link", "del", "eth0"]);
    assert_error(&check(), 107, "1.1.0", &["eth0"]);

    // CHECK of something never added.
    let out = node.cni(
        "CHECK",
        "never-added",
        &netns,
        "eth0",
        "",
        &with_prev(&config, &r),
    );
    assert_error(&out, 3, "1.1.0", &["never-added", "not attached"]);

    ok_empty(
        &node.cni("DEL", &cid, &netns, "eth0", "", &config),
        "DEL after the changes",
    );
    assert_released(&node, Some(&ns), &cid, "eth0", free0);
}

#[test]
fn del_after_the_netns_is_gone() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("gon");
    let free0 = node.addresses_free();
    let (ns, netns) = pod_netns("g");
    let cid = unique_name("ctr");
    let config = node.cni_config("1.1.0");
    let r = ok_json(&node.cni("ADD", &cid, &netns, "eth0", "", &config), "ADD");
    let tap = node.endpoints()[0]["tap"].as_str().unwrap().to_owned();
    drop(ns); // the runtime tore the sandbox down before calling DEL
    assert!(!std::path::Path::new(&netns).exists());

    ok_empty(
        &node.cni("DEL", &cid, &netns, "eth0", "", &with_prev(&config, &r)),
        "DEL with the netns gone",
    );
    assert_released(&node, None, &cid, "eth0", free0);
    ok_empty(
        &node.cni("DEL", &cid, &netns, "eth0", "", &config),
        "DEL again",
    );
    // Nor did the TAP fall back into the root namespace (only looked at, never
    // changed): no link there has the pod interface's MAC.
    let _ = tap;
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_owned();
    let root = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&root.stdout).contains(&mac),
        "the pod's TAP ({mac}) is in the root namespace"
    );
    // The address is really reusable: a new pod can be added and works.
    let (ns2, netns2) = pod_netns("g");
    let r2 = ok_json(
        &node.cni("ADD", &unique_name("ctr"), &netns2, "eth0", "", &config),
        "ADD after",
    );
    assert_add_result(&r2, "1.1.0", "eth0", &netns2, &node, &ns2);
}

#[test]
fn second_add_of_an_attachment_fails_and_keeps_the_first() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("dup");
    let free0 = node.addresses_free();
    let (ns, netns) = pod_netns("d");
    let cid = unique_name("ctr");
    let config = node.cni_config("1.1.0");
    let r = ok_json(
        &node.cni("ADD", &cid, &netns, "eth0", "", &config),
        "first ADD",
    );
    let ip = assert_add_result(&r, "1.1.0", "eth0", &netns, &node, &ns);
    let mac = r["interfaces"][0]["mac"].as_str().unwrap().to_owned();

    // Same container and interface, same or another namespace.
    let (ns_b, netns_b) = pod_netns("d");
    for target in [&netns, &netns_b] {
        let out = node.cni("ADD", &cid, target, "eth0", "", &config);
        assert_error(
            &out,
            101,
            "1.1.0",
            &[&cid, "eth0", "already attached", &ip.to_string()],
        );
    }
    assert!(
        !has_link(&ns_b, "eth0"),
        "nothing added to the other namespace"
    );
    // Another container id, but the interface name is taken in that namespace.
    let out = node.cni("ADD", &unique_name("ctr"), &netns, "eth0", "", &config);
    assert_error(&out, 101, "1.1.0", &["eth0", "already exists"]);
    assert_eq!(
        node.addresses_free(),
        free0 - 1,
        "no address taken by the failed ADDs"
    );
    assert_eq!(node.endpoints().len(), 1);

    // The first attachment still works: CHECK, and traffic to a second pod.
    assert_pod_wired(&ns, "eth0", ip, &mac, node.pod_mtu());
    ok_empty(
        &node.cni("CHECK", &cid, &netns, "eth0", "", &with_prev(&config, &r)),
        "CHECK after",
    );
    let (ns2, netns2) = pod_netns("d");
    let r2 = ok_json(
        &node.cni("ADD", &unique_name("ctr"), &netns2, "eth0", "", &config),
        "ADD of a peer pod",
    );
    let ip2 = assert_add_result(&r2, "1.1.0", "eth0", &netns2, &node, &ns2);
    let t = std::time::Instant::now();
    let mut answered = false;
    while !answered && t.elapsed() < Duration::from_secs(10) {
        answered = ns
            .exec("ping", &["-c", "1", "-W", "1", &ip2.to_string()])
            .status
            .success();
    }
    assert!(
        answered,
        "the first pod reaches a second pod\n{}",
        node.log()
    );
}

#[test]
fn gc_releases_what_is_not_listed() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("gc");
    let free0 = node.addresses_free();
    let config = node.cni_config("1.1.0");
    let pods: Vec<(Netns, String, String)> = (0..4)
        .map(|_| {
            let (ns, netns) = pod_netns("c");
            let cid = unique_name("ctr");
            ok_json(&node.cni("ADD", &cid, &netns, "eth0", "", &config), "ADD");
            (ns, netns, cid)
        })
        .collect();
    assert_eq!(node.addresses_free(), free0 - 4);
    let (keep, drop) = pods.split_at(2);

    // GC needs the list; without it nothing may be collected.
    let gc = |list: Option<Value>| {
        let mut conf: Value = serde_json::from_str(&config).unwrap();
        if let Some(list) = list {
            conf["cni.dev/valid-attachments"] = list;
        }
        cni_exec(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
            &conf.to_string(),
        )
    };
    assert_error(&gc(None), 7, "1.1.0", &["cni.dev/valid-attachments"]);
    assert_eq!(node.endpoints().len(), 4);

    let valid: Vec<Value> = keep
        .iter()
        .map(|(_, _, cid)| json!({"containerID": cid, "ifname": "eth0"}))
        .collect();
    ok_empty(&gc(Some(json!(valid))), "GC");
    let held = node.holdings();
    let want: Vec<(String, String)> = {
        let mut w: Vec<_> = keep
            .iter()
            .map(|(_, _, cid)| (cid.clone(), "eth0".to_owned()))
            .collect();
        w.sort();
        w
    };
    assert_eq!(held.endpoints, want, "only the listed attachments are kept");
    assert_eq!(
        held.addresses_free,
        free0 - 2,
        "the others' addresses are free"
    );
    assert!(held.taps.is_empty(), "{:?}", held.taps);
    for (ns, _, _) in drop {
        assert!(!has_link(ns, "eth0"), "a collected pod loses its interface");
    }
    for (ns, _, _) in keep {
        assert!(has_link(ns, "eth0"), "a listed pod keeps its interface");
    }
    // GC again with the same list changes nothing; with an empty list takes the rest.
    ok_empty(&gc(Some(json!(valid))), "GC again");
    assert_eq!(node.endpoints().len(), 2);
    ok_empty(&gc(Some(json!([]))), "GC of everything");
    assert_eq!(
        node.holdings(),
        NodeHoldings {
            addresses_free: free0,
            endpoints: vec![],
            taps: vec![]
        },
        "nothing left"
    );
    for (ns, _, _) in keep {
        assert!(!has_link(ns, "eth0"));
    }
}

/// 64 runtimes' ADDs at once, then 64 DELs at once.
#[test]
fn parallel_adds_and_dels() {
    if skip_unless_root() {
        return;
    }
    const PODS: usize = 64;
    let (_u, node) = one_node("par");
    let before = node.holdings();
    let config = node.cni_config("1.1.0");
    let pods: Vec<(Netns, String, String, Ipv4Addr)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (node, config) = (&node, &config);
                s.spawn(move || {
                    let (ns, netns) = pod_netns("p");
                    let cid = format!("{}-{i}", unique_name("ctr"));
                    let args =
                        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=par;K8S_POD_NAME=pod-{i}");
                    let out = node.cni("ADD", &cid, &netns, "eth0", &args, config);
                    let r = ok_json(&out, &format!("parallel ADD {i}"));
                    let addr = r["ips"][0]["address"].as_str().unwrap();
                    let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
                    (ns, netns, cid, ip)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an ADD thread panicked"))
            .collect()
    });
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.3).collect();
    assert_eq!(ips.len(), PODS, "every pod got its own address");
    let held = node.holdings();
    assert_eq!(held.endpoints.len(), PODS);
    assert_eq!(held.addresses_free, before.addresses_free - PODS as u64);
    assert!(
        held.taps.is_empty(),
        "every TAP moved into its pod: {:?}",
        held.taps
    );
    for (ns, _, _, ip) in &pods {
        let addrs = &ip_json(ns, &["-4", "addr", "show", "dev", "eth0"])[0]["addr_info"];
        assert_eq!(addrs[0]["local"], ip.to_string(), "{}", ns.name());
    }

    std::thread::scope(|s| {
        for (i, (_, netns, cid, _)) in pods.iter().enumerate() {
            let (node, config) = (&node, &config);
            s.spawn(move || {
                let out = node.cni("DEL", cid, netns, "eth0", "IgnoreUnknown=1", config);
                ok_empty(&out, &format!("parallel DEL {i}"));
            });
        }
    });
    for (ns, ..) in &pods {
        assert!(!has_link(ns, "eth0"), "{} still has eth0", ns.name());
    }
    assert_eq!(
        node.holdings(),
        before,
        "no TAPs, records or addresses left"
    );
    let st = node.status_json();
    assert_eq!(st["pods"], 0, "{st}");
}

// One test per error code: the code, a message saying what was wrong, and
// nothing left behind (no address, record, TAP or pod interface).

/// Runs `f` against a fresh pod namespace and asserts that the node and the
/// pod are as they were.
fn leaves_nothing(node: &Node, f: impl FnOnce(&Netns, &str)) {
    let before = node.holdings();
    let (ns, netns) = pod_netns("e");
    f(&ns, &netns);
    assert_eq!(node.holdings(), before, "the node holds nothing more");
    assert_eq!(links_in(&ns), ["lo"], "nothing added to the pod");
}

#[test]
fn error_1_incompatible_version() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("e1");
    leaves_nothing(&node, |_, netns| {
        for bad in ["0.1.0", "9.9.9"] {
            let out = node.cni_cmd("ADD", &unique_name("ctr"), netns, "eth0", bad);
            // The version cannot be answered in, so the newest is used.
            assert_error(
                &out,
                1,
                "1.1.0",
                &[&format!("\"{bad}\""), "not supported", "1.1.0"],
            );
        }
        // No cniVersion at all.
        let conf = json!({"name": "sluice", "type": "sluice", "socket": node.socket()}).to_string();
        let out = node.cni("ADD", &unique_name("ctr"), netns, "eth0", "", &conf);
        assert_error(&out, 1, "1.1.0", &["no cniVersion"]);
        // CHECK does not exist before 0.4.0.
        let out = node.cni_cmd("CHECK", &unique_name("ctr"), netns, "eth0", "0.3.1");
        assert_error(&out, 1, "0.3.1", &["CHECK", "0.4.0"]);
    });
}

#[test]
fn error_4_invalid_environment() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("e4");
    let config = node.cni_config("1.0.0");
    leaves_nothing(&node, |_, netns| {
        let cid = unique_name("ctr");
        // CNI_CONTAINERID missing altogether.
        let out = cni_exec(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
            ],
            &config,
        );
        assert_error(&out, 4, "1.0.0", &["CNI_CONTAINERID", "missing", "ADD"]);
        // Several missing at once are all named.
        let out = cni_exec(&[("CNI_COMMAND", "ADD")], &config);
        assert_error(
            &out,
            4,
            "1.0.0",
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        );
        // Bad interface names.
        for (bad, why) in [
            ("eth0/x", "'/'"),
            ("a-very-long-ifname", "15"),
            ("eth 0", "whitespace"),
        ] {
            let out = node.cni("ADD", &cid, netns, bad, "", &config);
            assert_error(&out, 4, "1.0.0", &["CNI_IFNAME", &format!("{bad:?}"), why]);
        }
        // A bad container id.
        let out = node.cni("ADD", "-leading-dash", netns, "eth0", "", &config);
        assert_error(&out, 4, "1.0.0", &["CNI_CONTAINERID", "\"-leading-dash\""]);
        // A relative netns path.
        let out = node.cni("ADD", &cid, "run/netns/x", "eth0", "", &config);
        assert_error(&out, 4, "1.0.0", &["CNI_NETNS", "absolute"]);
        // An unknown CNI_ARGS key without IgnoreUnknown, and a pair without '='.
        let out = node.cni(
            "ADD",
            &cid,
            netns,
            "eth0",
            "K8S_POD_NAME=web;FOO=bar",
            &config,
        );
        assert_error(&out, 4, "1.0.0", &["CNI_ARGS", "FOO", "IgnoreUnknown"]);
        let out = node.cni("ADD", &cid, netns, "eth0", "K8S_POD_NAME", &config);
        assert_error(&out, 4, "1.0.0", &["CNI_ARGS", "K8S_POD_NAME", "'='"]);
        // An unknown command.
        let out = cni_exec(
            &[
                ("CNI_COMMAND", "ATTACH"),
                ("CNI_CONTAINERID", &cid),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
            ],
            &config,
        );
        assert_error(&out, 4, "1.1.0", &["CNI_COMMAND", "\"ATTACH\""]);
        // With IgnoreUnknown the same unknown key is fine (then undone).
        let out = node.cni(
            "ADD",
            &cid,
            netns,
            "eth0",
            "IgnoreUnknown=1;FOO=bar",
            &config,
        );
        ok_json(&out, "ADD with IgnoreUnknown");
        ok_empty(&node.cni("DEL", &cid, netns, "eth0", "", &config), "DEL");
    });
}

#[test]
fn error_6_undecodable_stdin() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("e6");
    leaves_nothing(&node, |_, netns| {
        for bad in ["not json", "", "{\"cniVersion\":\"1.0.0\",", "[1,2,3]"] {
            let out = node.cni("ADD", &unique_name("ctr"), netns, "eth0", "", bad);
            assert_error(
                &out,
                6,
                "1.1.0",
                &["network configuration on stdin is not valid"],
            );
        }
        // A prevResult that is not a result.
        let conf = json!({"cniVersion": "1.0.0", "name": "sluice", "type": "sluice",
                          "socket": node.socket(), "prevResult": {"ips": [{"address": 5}]}});
        let out = node.cni(
            "CHECK",
            &unique_name("ctr"),
            netns,
            "eth0",
            "",
            &conf.to_string(),
        );
        assert_error(&out, 6, "1.0.0", &["prevResult"]);
    });
}

#[test]
fn error_7_invalid_network_config() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("e7");
    let pod_mtu = node.pod_mtu();
    leaves_nothing(&node, |_, netns| {
        let base: Value = serde_json::from_str(&node.cni_config("1.0.0")).unwrap();
        let with = |key: &str, value: Value| {
            let mut c = base.clone();
            c[key] = value;
            c.to_string()
        };
        let too_big = pod_mtu + 1;
        let cases: Vec<(String, Vec<String>)> = vec![
            (
                with("ipam", json!({"type": "host-local"})),
                vec!["\"ipam\"".into(), "Sluice allocates".into()],
            ),
            (
                with("type", json!("bridge")),
                vec!["\"type\"".into(), "\"bridge\"".into(), "\"sluice\"".into()],
            ),
            (
                with("mtu", json!("1400")),
                vec!["\"mtu\"".into(), "\"1400\"".into(), "integer".into()],
            ),
            (
                with("socket", json!("relative.sock")),
                vec!["\"socket\"".into(), "absolute".into()],
            ),
            (
                with("name", json!("bad name")),
                vec!["\"name\"".into(), "\"bad name\"".into()],
            ),
            // Judged by sluiced, which knows the node's pod MTU.
            (
                with("mtu", json!(too_big)),
                vec![format!("mtu {too_big}"), format!("576..={pod_mtu}")],
            ),
            (
                with("mtu", json!(500)),
                vec!["mtu 500".into(), "576".into()],
            ),
        ];
        for (conf, needles) in cases {
            let out = node.cni("ADD", &unique_name("ctr"), netns, "eth0", "", &conf);
            let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
            assert_error(&out, 7, "1.0.0", &needles);
        }
    });
}

#[test]
fn error_11_no_daemon() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // No socket file at all, and a stale one nobody listens on.
    let missing = dir.path().join("missing.sock");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (ns, netns) = pod_netns("e");
    for socket in [&missing, &stale] {
        let conf =
            json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice", "socket": socket});
        let shown = socket.display().to_string();
        let out = cni_exec(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf.to_string(),
        );
        assert_error(&out, 11, "1.1.0", &[&shown, "try again later"]);
        // DEL cannot be done later by anyone else: it reports the same.
        let out = cni_exec(
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf.to_string(),
        );
        assert_error(&out, 11, "1.1.0", &[&shown]);
    }
    assert_eq!(links_in(&ns), ["lo"], "nothing added to the pod");
}

#[test]
fn error_50_status_without_daemon() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sluiced.sock");
    let conf = json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice", "socket": socket});
    let out = cni_exec(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
    assert_error(
        &out,
        50,
        "1.1.0",
        &["cannot serve ADD", &socket.display().to_string()],
    );
}

#[test]
fn add_into_a_missing_netns() {
    if skip_unless_root() {
        return;
    }
    let (_u, node) = one_node("enx");
    let before = node.holdings();
    let dir = tempfile::tempdir().unwrap();
    let not_netns = dir.path().join("plain-file");
    std::fs::write(&not_netns, b"").unwrap();
    let missing = format!("/var/run/netns/{}", unique_name("gone"));
    for netns in [missing.as_str(), not_netns.to_str().unwrap()] {
        let out = node.cni_cmd("ADD", &unique_name("ctr"), netns, "eth0", "1.1.0");
        assert_error(&out, 102, "1.1.0", &[netns, "network namespace"]);
        assert_eq!(node.holdings(), before, "nothing allocated for {netns}");
    }
}
