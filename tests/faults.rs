//! Faults: sluiced killed in the middle of an attachment storm; a state file
//! and its backup both damaged, refused, then rebuilt with `--recover`.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::cluster::{cni_exec, Node, Underlay};
use common::{skip_unless_root, unique, Netns};

/// SIGKILL during 32 parallel ADDs, restart, then what a runtime does: DEL
/// for every ADD that did not succeed, GC with the attachments it holds. No
/// duplicate addresses, no leaked allocations, interfaces or records.
#[test]
fn crash_during_attachment_storm() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("fs");
    let mut node = Node::new(&u, "fs", 1, "vxlan", "socket");
    node.start();
    let free0 = node.addresses_free();
    let pods: Vec<(Netns, String)> = (0..32)
        .map(|i| {
            (
                Netns::new(&unique(&format!("slfsp{i:02}"))),
                format!("storm-{i}"),
            )
        })
        .collect();
    let config = node.cni_config("1.1.0");
    let handles: Vec<_> = pods
        .iter()
        .map(|(ns, cid)| {
            let netns = format!("/var/run/netns/{}", ns.name());
            let (cid, config) = (cid.clone(), config.clone());
            std::thread::spawn(move || {
                let env = [
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", cid.as_str()),
                    ("CNI_NETNS", netns.as_str()),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_PATH", "/opt/cni/bin"),
                ];
                cni_exec(&env, &config).code == 0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(60));
    node.kill();
    let ok: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    node.start();
    // The runtime: DEL every attachment whose ADD failed, then GC with the rest.
    for (i, good) in ok.iter().enumerate() {
        if !good {
            let netns = format!("/var/run/netns/{}", pods[i].0.name());
            let out = node.cni("DEL", &pods[i].1, &netns, "eth0", "", &config);
            assert_eq!(out.code, 0, "DEL {}: {}", pods[i].1, out.stdout);
        }
    }
    let valid: Vec<String> = ok
        .iter()
        .enumerate()
        .filter(|(_, g)| **g)
        .map(|(i, _)| format!(r#"{{"containerID":"{}","ifname":"eth0"}}"#, pods[i].1))
        .collect();
    let gc = format!(
        r#"{{"cniVersion":"1.1.0","name":"sluice","type":"sluice","socket":"{}","cni.dev/valid-attachments":[{}]}}"#,
        node.socket().display(),
        valid.join(",")
    );
    let out = node.cni("GC", "", "", "", "", &gc);
    assert_eq!(out.code, 0, "GC: {}{}", out.stdout, out.stderr);

    let eps = node.endpoints();
    let ips: BTreeSet<String> = eps
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_owned())
        .collect();
    let n_ok = ok.iter().filter(|g| **g).count();
    eprintln!("{n_ok} of 32 ADDs succeeded before the kill");
    assert_eq!(eps.len(), n_ok, "records = successful ADDs: {eps:?}");
    assert_eq!(ips.len(), n_ok, "distinct addresses");
    assert_eq!(
        node.addresses_free(),
        free0 - n_ok as u64,
        "no leaked allocation"
    );
    for (i, good) in ok.iter().enumerate() {
        let has_eth0 = pods[i]
            .0
            .exec("ip", &["link", "show", "eth0"])
            .status
            .success();
        assert_eq!(
            has_eth0, *good,
            "pod {} interface present iff its ADD succeeded",
            pods[i].1
        );
    }
    // Every surviving pod still works: its address answers from the node.
    for e in &eps {
        let ip = e["ip"].as_str().unwrap();
        assert!(
            node.ns
                .exec("ping", &["-c", "1", "-W", "2", ip])
                .status
                .success(),
            "{ip}"
        );
    }
}

/// The first JSON value of a sealed state file (the state; the seal follows).
fn state_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("{} does not start with JSON", path.display()))
}

/// A namespace holding a TAP `eth0` labelled as `node`'s pod with `ip`, as an
/// ADD would leave it (address and MAC included) but never made by sluiced.
fn forged_pod(node: &str, cid: &str, ip: Ipv4Addr, kind: &str) -> Netns {
    let ns = Netns::new(&unique("slfrf"));
    let o = ip.octets();
    let mac = format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    match kind {
        "tap" => ns.exec_ok("ip", &["tuntap", "add", "dev", "eth0", "mode", "tap"]),
        _ => ns.exec_ok(
            "ip",
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
            ],
        ),
    };
    let alias = format!("sluice:v1 node={node} cid={cid} if=eth0 ip={ip}");
    ns.exec_ok(
        "ip",
        &["link", "set", "eth0", "address", &mac, "alias", &alias],
    );
    ns.exec_ok("ip", &["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    ns
}

/// Item 3: with `state.json` truncated and its backup corrupted, sluiced
/// refuses to start and names `--recover`; `--recover` rebuilds the endpoints
/// from the labelled pod TAPs (same addresses, traffic flows, saved), refuses
/// the labels it cannot prove, and a new ADD gets a fresh address.
#[test]
fn corrupt_state_is_refused_then_recovered_from_the_pod_taps() {
    if skip_unless_root() {
        return;
    }
    let u = Underlay::new("fr");
    let mut node = Node::new(&u, "fr", 1, "vxlan", "socket");
    // A name no other test's node has: labels are matched by node name, and
    // every test's pods share /var/run/netns.
    node.name = unique("frnode");
    node.start();
    let p1 = node.add_pod("r1");
    let p2 = node.add_pod("r2");
    assert!(
        p1.ping_until(p2.ip, Duration::from_secs(10)),
        "{}",
        node.log()
    );
    let before: BTreeSet<(String, String)> = node
        .endpoints()
        .iter()
        .map(|e| {
            (
                e["container_id"].as_str().unwrap().to_owned(),
                e["ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(before.len(), 2);
    assert!(node.stop().is_some_and(|s| s.success()), "{}", node.log());

    // Labels recovery must refuse: one on a veth (not a TAP), and two TAPs
    // claiming the same address.
    let veth_ip = Ipv4Addr::new(198, 19, 1, 200);
    let twin_ip = Ipv4Addr::new(198, 19, 1, 201);
    let _forged = [
        forged_pod(&node.name, "forged-veth", veth_ip, "veth"),
        forged_pod(&node.name, "forged-twin-a", twin_ip, "tap"),
        forged_pod(&node.name, "forged-twin-b", twin_ip, "tap"),
    ];

    // Damage both generations: truncate the state, flip a byte of the backup.
    let dir = node.dir.path().join("state");
    let (state, backup) = (dir.join("state.json"), dir.join("state.json.bak"));
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(&backup).unwrap();
    bytes[20] ^= 0x08;
    std::fs::write(&backup, bytes).unwrap();

    node.spawn();
    let st = node
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("sluiced started on a corrupt state:\n{}", node.log()));
    assert!(!st.success());
    let log = node.log();
    assert!(log.contains("is unusable"), "{log}");
    assert!(log.contains("start sluiced once with --recover"), "{log}");
    assert!(log.contains("state.json.bak"), "{log}");

    node.extra_args = vec!["--recover".into()];
    node.start();
    let after: BTreeSet<(String, String)> = node
        .endpoints()
        .iter()
        .map(|e| {
            assert_eq!(e["attached"], true, "{e}");
            (
                e["container_id"].as_str().unwrap().to_owned(),
                e["ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(after, before, "recovered endpoints\n{}", node.log());
    let log = node.log();
    for refused in [
        format!("{veth_ip}) in"),
        "forged-twin-a".to_owned(),
        "forged-twin-b".to_owned(),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&refused) && l.contains("not restored")),
            "refusal of {refused} not logged:\n{log}"
        );
    }
    assert!(log.contains("is claimed by 2 labelled TAPs"), "{log}");
    assert!(
        p1.ping_until(p2.ip, Duration::from_secs(10)),
        "{}",
        node.log()
    );
    assert!(p2.ping(p1.ip, 1));

    // The rebuilt state is saved; the damaged files are kept aside.
    let saved = state_json(&state);
    let saved_ips: BTreeSet<String> = saved["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ip"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        saved_ips,
        before.iter().map(|(_, ip)| ip.clone()).collect(),
        "{saved}"
    );
    assert!(dir.join("state.json.corrupt").exists());
    assert!(dir.join("state.json.bak.corrupt").exists());

    // A new ADD gets an address no recovered (or refused) pod holds.
    let p3 = node.add_pod("r3");
    let taken: BTreeSet<String> = after.iter().map(|(_, ip)| ip.clone()).collect();
    assert!(!taken.contains(&p3.ip.to_string()), "{} reused", p3.ip);
    assert!(p3.ping_until(p1.ip, Duration::from_secs(10)));

    // The next start loads the saved state as usual.
    assert!(node.stop().is_some_and(|s| s.success()), "{}", node.log());
    node.extra_args.clear();
    node.start();
    assert_eq!(node.endpoints().len(), 3, "{}", node.log());
    assert!(p1.ping_until(p3.ip, Duration::from_secs(10)));
}
