//! Helpers for the integration tests that need root: uniquely named network
//! namespaces that clean up after themselves (also when a test panics), commands
//! run inside them, and child processes killed on drop.
//!
//! Test traffic never leaves these namespaces; nothing here touches the root
//! namespace's links, addresses or routes.

#![allow(dead_code)] // each test binary uses its own subset

pub mod cluster;
pub mod etcd;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A short name no other test (in this process or a parallel one) uses:
/// `prefix`, then the process id and a counter in hex (at most 8 more bytes). With
/// a prefix of up to 7 bytes it fits an interface name (15 bytes, checked by
/// [`unique_ifname`]); namespace names may be longer.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only uniqueness matters, not ordering with other memory.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:02x}", std::process::id(), n & 0xff)
}

/// [`unique`], checked to fit an interface name.
pub fn unique_ifname(prefix: &str) -> String {
    let name = unique(prefix);
    assert!(
        name.len() <= 15,
        "interface name {name} too long; shorten the prefix"
    );
    name
}

/// True (after saying why) when the test cannot run here: not root, or no TUN
/// device, or no `ip`. Tests call it first and return early, so they still pass
/// as an ordinary user; CI runs as root.
pub fn skip_unless_root() -> bool {
    // The effective uid is the third field of /proc/self/status's Uid line.
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    let why = if euid != "0" {
        Some("not running as root")
    } else if !Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` command (iproute2) is missing")
    } else {
        None
    };
    match why {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

/// True (after saying why) when the command `tool` is not installed; `what`
/// names its package for the message.
pub fn skip_without(tool: &str, what: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return false;
    }
    eprintln!("skipped: {tool} ({what}) is not installed");
    true
}

/// A network namespace made with `ip netns add`, deleted on drop after every
/// process still inside it is killed.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Makes `vx0`, a kernel VXLAN device (VNI 4096, port 4789, no learning) on
/// `dev` with local address `local`, in `ns`, and brings it up: the real kernel
/// peer the uplink tests send to.
pub fn kernel_vxlan(ns: &Netns, dev: &str, local: &str) {
    ns.exec_ok(
        "ip",
        &[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "4096",
            "dstport",
            "4789",
            "local",
            local,
            "dev",
            dev,
            "nolearning",
        ],
    );
    ns.exec_ok("ip", &["link", "set", "vx0", "up"]);
}

impl Netns {
    /// Creates `name`. A namespace of that exact name left by a killed earlier run
    /// of this same process id is removed first.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "delete", name])
            .stderr(Stdio::null())
            .status();
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A handle for the Sluice library calls.
    pub fn handle(&self) -> sluice_dataplane::sys::netns::NetNs {
        sluice_dataplane::sys::netns::NetNs::named(&self.name).expect("opening the namespace")
    }

    /// Runs `cmd args` inside the namespace and waits for it.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {cmd} in {}: {e}", self.name))
    }

    /// Like [`Netns::exec`], failing the test unless the command succeeds; returns
    /// its standard output.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A link's counter from `/sys/class/net/IFNAME/statistics/` (e.g.
    /// `rx_packets`), as the namespace sees it.
    pub fn link_counter(&self, ifname: &str, counter: &str) -> u64 {
        let path = format!("/sys/class/net/{ifname}/statistics/{counter}");
        self.exec_ok("cat", &[&path])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path} in {}: {e}", self.name))
    }

    /// Starts `cmd args` inside the namespace; it is killed when the guard drops.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Child {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd} in {}: {e}", self.name));
        Child(Some(child))
    }

    fn kill_all(&self) {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        else {
            return;
        };
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-9", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!(
                    "warning: ip netns delete {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// A child process killed (and reaped) on drop unless it was waited for.
#[derive(Debug)]
pub struct Child(Option<std::process::Child>);

impl Child {
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    /// Waits at most `timeout` for the process to end; `None` if it is still
    /// running (it is killed when the guard drops).
    pub fn wait_timeout(&mut self, timeout: std::time::Duration) -> Option<Output> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let child = self.0.as_mut()?;
            match child.try_wait() {
                Ok(Some(_)) => return self.0.take()?.wait_with_output().ok(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The TCP segment a VXLAN frame carries (outer Ethernet, IPv4 without
/// options and UDP, then VXLAN and the inner Ethernet frame): its sequence
/// number and payload, after checking that the inner IPv4 and TCP checksums
/// are complete and right. `what` names the frame in a failure.
pub fn vxlan_inner_tcp(frame: &[u8], what: &str) -> (u32, Vec<u8>) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sp = SlicedPacket::from_ethernet(&frame[50..])
        .unwrap_or_else(|e| panic!("{what}: inner frame: {e}"));
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (sp.net, sp.transport) else {
        panic!("{what} is not TCP/IPv4");
    };
    let ih = ip.header().to_header();
    assert_eq!(
        ih.header_checksum,
        ih.calc_header_checksum(),
        "{what}: inner IPv4 checksum"
    );
    let th = tcp.to_header();
    assert_eq!(
        th.checksum,
        th.calc_checksum_ipv4(&ih, tcp.payload()).unwrap(),
        "{what}: inner TCP checksum"
    );
    (th.sequence_number, tcp.payload().to_vec())
}
