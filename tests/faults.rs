//! Faults: sluiced killed in the middle of an attachment storm.

mod common;

use std::collections::BTreeSet;
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
