//! Wiring a pod's interface: a persistent TAP created in the node's namespace,
//! moved into the pod's namespace under the runtime's interface name, and
//! configured the Calico way (address /32, 169.254.1.1 as a scope-link route,
//! default route via it).

// Errors here are rare and on the control path; their size does not matter.
#![allow(clippy::result_large_err)]

use std::net::Ipv4Addr;

use sluice_dataplane::port::tap::{Tap, TapError, TapOptions};
use sluice_dataplane::sys::link::{LinkError, Netlink};
use sluice_dataplane::sys::netns::{in_netns, NetNs, NetnsError};
use sluice_dataplane::wire::MacAddr;

/// Something failed while wiring or unwiring a pod interface.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("network namespace {path:?} cannot be used: {source}")]
    Netns { path: String, source: NetnsError },
    #[error("TAP {name}: {source}")]
    Tap { name: String, source: TapError },
    #[error("configuring {what} of {ifname} in {netns}: {source}")]
    Link {
        what: &'static str,
        ifname: String,
        netns: String,
        source: LinkError,
    },
    #[error("interface {ifname} already exists in {netns}: expected a free interface name")]
    IfnameTaken { ifname: String, netns: String },
}

/// Maps a failure to open or enter the namespace at `netns`.
fn netns_err(netns: &str) -> impl FnOnce(NetnsError) -> PodNetError + '_ {
    move |source| PodNetError::Netns {
        path: netns.to_owned(),
        source,
    }
}

/// Maps a netlink failure doing `what` to `ifname` in `netns`.
fn link_err<'a>(
    what: &'static str,
    ifname: &'a str,
    netns: &'a str,
) -> impl FnOnce(LinkError) -> PodNetError + 'a {
    move |source| PodNetError::Link {
        what,
        ifname: ifname.to_owned(),
        netns: netns.to_owned(),
        source,
    }
}

/// The MAC of a pod interface: locally administered, derived from its address
/// (unique on the node as addresses are, and the same after a restart).
pub fn pod_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// TAP options for pod ports: checksum offload and TCP segmentation offload, so
/// a pod's TCP hands over 64 KiB superframes that the port segments itself.
pub fn tap_options() -> TapOptions {
    TapOptions::new().offloads(sluice_dataplane::port::tap::Offloads::TSO4)
}

/// What a wired pod interface looks like.
#[derive(Debug)]
pub struct Wired {
    pub tap: Tap,
    pub mac: MacAddr,
}

/// Creates the TAP directly inside `netns` under the runtime's interface name
/// and configures it there; last, it gets `alias` (a [`super::recover::TapLabel`]
/// that `sluiced --recover` reads back), so only a fully wired TAP carries one.
/// (Creating it in the node's namespace and moving it costs an RTM_SETLINK that
/// waits out an RCU grace period, 15-20 ms.) `queue_len` is the TAP's
/// `txqueuelen`, the frames the pod may queue for the worker (see
/// `tap_queue_len` in the configuration). On failure, nothing is left: the TAP
/// is deleted.
pub fn wire(
    netns: &str,
    ifname: &str,
    ip: Ipv4Addr,
    mtu: u32,
    queue_len: u32,
    alias: &str,
) -> Result<Wired, PodNetError> {
    let ns = NetNs::open(netns).map_err(netns_err(netns))?;
    let tap = in_netns(&ns, || {
        if nix::net::if_::if_nametoindex(ifname).is_ok() {
            return Err(PodNetError::IfnameTaken {
                ifname: ifname.to_owned(),
                netns: netns.to_owned(),
            });
        }
        Tap::create(ifname, &tap_options()).map_err(|source| PodNetError::Tap {
            name: ifname.to_owned(),
            source,
        })
    })
    .map_err(netns_err(netns))??;
    match configure(&ns, netns, ifname, ip, mtu, queue_len, alias) {
        Ok(mac) => Ok(Wired { tap, mac }),
        Err(e) => {
            let _ = tap.delete();
            Err(e)
        }
    }
}

fn configure(
    ns: &NetNs,
    netns: &str,
    ifname: &str,
    ip: Ipv4Addr,
    mtu: u32,
    queue_len: u32,
    alias: &str,
) -> Result<MacAddr, PodNetError> {
    let link_err = |what| link_err(what, ifname, netns);
    let mut pod_nl = Netlink::open_in(ns).map_err(link_err("netlink socket in pod"))?;
    let idx = pod_nl.ifindex(ifname).map_err(link_err("ifindex"))?;
    let mac = pod_mac(ip);
    pod_nl.set_mac(idx, mac.0).map_err(link_err("MAC"))?;
    pod_nl.set_mtu(idx, mtu).map_err(link_err("MTU"))?;
    // Before the link goes up (configure_pod_link), where no qdisc is swapped.
    pod_nl
        .set_tx_queue_len(idx, queue_len)
        .map_err(link_err("txqueuelen"))?;
    pod_nl
        .configure_pod_link(idx, ip)
        .map_err(link_err("address and routes"))?;
    pod_nl.set_alias(idx, alias).map_err(link_err("alias"))?;
    Ok(mac)
}

/// Deletes the pod interface `ifname` that this ADD made, through netlink in
/// its namespace: unlike [`Tap::delete`] this works while a descriptor (one
/// still queued to a worker) holds the TAP.
pub fn delete(netns: &str, ifname: &str) -> Result<(), PodNetError> {
    let ns = NetNs::open(netns).map_err(netns_err(netns))?;
    let link_err = |what| link_err(what, ifname, netns);
    let mut nl = Netlink::open_in(&ns).map_err(link_err("netlink socket in pod"))?;
    let idx = nl.ifindex(ifname).map_err(link_err("ifindex"))?;
    nl.delete_link(idx).map_err(link_err("delete"))
}

/// Re-opens a pod's persistent TAP after a restart, from inside its namespace.
pub fn reattach(netns: &str, ifname: &str) -> Result<Tap, PodNetError> {
    let ns = NetNs::open(netns).map_err(netns_err(netns))?;
    in_netns(&ns, || Tap::attach(ifname, &tap_options()))
        .map_err(netns_err(netns))?
        .map_err(|source| PodNetError::Tap {
            name: ifname.to_owned(),
            source,
        })
}

/// Deletes `ifname` in `netns` if it is a TAP Sluice made that no record
/// holds: what an ADD interrupted by a crash leaves behind, found by the
/// runtime's DEL. Sluice's: a TUN/TAP device whose MAC has Sluice's pod
/// prefix, or one with no IPv4 address yet (the crash came between creating
/// the TAP and configuring it, while it still had the kernel's random MAC).
/// Returns whether something was deleted.
pub fn remove_orphan(netns: &str, ifname: &str) -> bool {
    let Ok(ns) = NetNs::open(netns) else {
        return false;
    };
    in_netns(&ns, || {
        let addrs: Vec<_> = nix::ifaddrs::getifaddrs()
            .map(|a| a.filter(|a| a.interface_name == ifname).collect())
            .unwrap_or_default();
        let mac = addrs.iter().find_map(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_link_addr())
                .and_then(|l| l.addr())
        });
        let has_ipv4 = addrs.iter().any(|a| {
            a.address
                .as_ref()
                .is_some_and(|s| s.as_sockaddr_in().is_some())
        });
        let sluice_mac = mac.is_some_and(|m| m[0] == 0x0a && m[1] == 0x58);
        if mac.is_none() || (has_ipv4 && !sluice_mac) {
            return false;
        }
        // Attaching succeeds only for a TUN/TAP device of that name.
        match Tap::attach(ifname, &tap_options()) {
            Ok(t) => t.delete().is_ok(),
            Err(_) => false,
        }
    })
    .unwrap_or(false)
}

/// Checks a pod interface is still as wired: present, with the address and MAC.
pub fn check(netns: &str, ifname: &str, ip: Ipv4Addr, mac: MacAddr) -> Result<(), String> {
    let ns = NetNs::open(netns).map_err(|e| format!("network namespace {netns}: {e}"))?;
    in_netns(&ns, || -> Result<(), String> {
        let idx = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| format!("interface {ifname} in {netns}: {e}"))?;
        let _ = idx;
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("addresses in {netns}: {e}"))?;
        let mut has_ip = false;
        for a in addrs.filter(|a| a.interface_name == ifname) {
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                has_ip |= sin.ip() == ip;
            }
            if let Some(ll) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
                if let Some(hw) = ll.addr() {
                    if hw != mac.0 {
                        return Err(format!(
                            "{ifname} in {netns} has MAC {}, expected {mac}",
                            MacAddr(hw)
                        ));
                    }
                }
            }
        }
        if !has_ip {
            return Err(format!("{ifname} in {netns} does not hold {ip}"));
        }
        Ok(())
    })
    .map_err(|e| format!("network namespace {netns}: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace made with `ip netns add`, deleted on drop.
    struct ScratchNs(String);

    impl ScratchNs {
        fn new(tag: &str) -> ScratchNs {
            let name = format!("slpod-{tag}-{:x}", std::process::id());
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &name])
                .stderr(std::process::Stdio::null())
                .status();
            let ok = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns add {name}");
            ScratchNs(name)
        }

        fn path(&self) -> String {
            format!("/run/netns/{}", self.0)
        }
    }

    impl Drop for ScratchNs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }

    fn has_link(netns: &str, ifname: &str) -> bool {
        let ns = NetNs::open(netns).expect("opening the namespace");
        in_netns(&ns, || nix::net::if_::if_nametoindex(ifname).is_ok()).expect("entering")
    }

    #[test]
    fn delete_removes_a_pod_tap_whose_descriptor_is_still_open() {
        // The effective uid: the third field of the Uid line.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2));
        if euid != Some("0") || !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: needs root and /dev/net/tun (a network namespace and a TAP)");
            return;
        }
        let ns = ScratchNs::new("del");
        let path = ns.path();
        let ip = Ipv4Addr::new(198, 19, 7, 2);
        let wired = wire(&path, "eth0", ip, 1450, 1000, "sluice test").expect("wiring");
        // The descriptor stays open, as one queued to a worker is: the TAP
        // cannot be attached again to delete it that way.
        assert!(reattach(&path, "eth0").is_err());
        delete(&path, "eth0").expect("deleting");
        assert!(!has_link(&path, "eth0"), "eth0 still there");
        drop(wired);
        assert!(!has_link(&path, "eth0"), "eth0 came back");
        // A second delete names what is missing.
        let e = delete(&path, "eth0").unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains(&path), "{e}");
    }

    #[test]
    fn pod_macs_come_from_the_address() {
        assert_eq!(
            pod_mac(Ipv4Addr::new(198, 19, 1, 5)).to_string(),
            "0a:58:c6:13:01:05"
        );
    }
}
