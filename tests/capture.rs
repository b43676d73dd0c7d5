//! `sluicectl capture` writes a pcap that tshark reads, with the expected
//! packets: ICMP on a pod's port, VXLAN on the uplink.

mod common;

use std::time::Duration;

use common::cluster::{bin, two_peered_nodes};
use common::{skip_unless_root, skip_without};

#[test]
fn capture_pod_and_uplink() {
    if skip_unless_root() {
        return;
    }
    if skip_without("tshark", "Debian package tshark") {
        return;
    }
    let (_u, a, b) = two_peered_nodes("cp", "vxlan", "socket");
    let a1 = a.add_pod("a1");
    let b1 = b.add_pod("b1");
    assert!(a1.ping_until(b1.ip, Duration::from_secs(10)));
    let pod_pcap = a.dir.path().join("pod.pcap");
    let up_pcap = a.dir.path().join("uplink.pcap");
    let start = |port: &str, file: &std::path::Path| {
        std::process::Command::new(bin("sluicectl"))
            .arg("--socket")
            .arg(a.socket())
            .args([
                "capture",
                "--port",
                port,
                "--count",
                "50",
                "--timeout",
                "4",
                "-w",
            ])
            .arg(file)
            .spawn()
            .unwrap()
    };
    let mut c1 = start("default/a1", &pod_pcap);
    let mut c2 = start("uplink", &up_pcap);
    // Let both captures reach their workers before the first packet.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(a1.ping(b1.ip, 3));
    assert!(c1.wait().unwrap().success() && c2.wait().unwrap().success());
    let read = |f: &std::path::Path, filter: &str| {
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(f)
            .args(["-Y", filter])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tshark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(
        read(&pod_pcap, "icmp.type == 8"),
        3,
        "echo requests from the pod"
    );
    assert_eq!(
        read(&pod_pcap, "icmp.type == 0"),
        3,
        "echo replies to the pod"
    );
    assert_eq!(
        read(&up_pcap, "vxlan.vni == 4096 && icmp"),
        6,
        "tunnelled ICMP on the uplink"
    );
    // A bad port is refused by name.
    let (ok, _, err) = a.ctl(&["capture", "--port", "nowhere", "-w", "/dev/null"]);
    assert!(!ok && err.contains("nowhere"), "{err}");
}
