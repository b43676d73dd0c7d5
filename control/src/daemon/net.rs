//! What sluiced needs from the node's own network: facts about the uplink,
//! next-hop MAC resolution through the kernel's neighbour table, the host
//! port and the node routes through it.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;

use sluice_dataplane::port::tap::{Tap, TapError};
use sluice_dataplane::sys::link::{LinkError, Netlink, RouteV4};
use sluice_dataplane::table::Prefix;
use sluice_dataplane::wire::MacAddr;

/// The uplink as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkInfo {
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u16,
    /// IPv4 addresses with their prefix lengths.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}

/// The uplink is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("uplink {name:?} not found in this network namespace: expected an existing interface (check `uplink` in the config)")]
    NoUplink { name: String },
    #[error("reading {what} of {name}: {detail}")]
    Read {
        what: &'static str,
        name: String,
        detail: String,
    },
    #[error("host port {name}: {source}")]
    HostTap { name: String, source: TapError },
    #[error("host port {name}: {what}: {source}")]
    HostLink {
        name: String,
        what: &'static str,
        source: LinkError,
    },
    #[error("nftables table ip {NATIVE_TABLE}: {detail}")]
    Nft { detail: String },
}

/// Reads the uplink's MAC, MTU and IPv4 addresses.
pub fn uplink_info(name: &str) -> Result<UplinkInfo, NetError> {
    if nix::net::if_::if_nametoindex(name).is_err() {
        return Err(NetError::NoUplink {
            name: name.to_owned(),
        });
    }
    let mut mac = None;
    let mut ipv4 = Vec::new();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NetError::Read {
        what: "addresses",
        name: name.to_owned(),
        detail: e.to_string(),
    })?;
    for a in addrs.filter(|a| a.interface_name == name) {
        if let Some(ll) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
            mac = ll.addr().map(MacAddr);
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let len = a
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| u32::from(m.ip()).count_ones() as u8);
            ipv4.push((sin.ip(), len));
        }
    }
    let mtu = read_sys(name, "mtu")?
        .trim()
        .parse::<u16>()
        .map_err(|e| NetError::Read {
            what: "MTU",
            name: name.to_owned(),
            detail: e.to_string(),
        })?;
    let mac = mac.ok_or_else(|| NetError::Read {
        what: "MAC",
        name: name.to_owned(),
        detail: "none".into(),
    })?;
    Ok(UplinkInfo {
        name: name.to_owned(),
        mac,
        mtu,
        ipv4,
    })
}

fn read_sys(name: &str, what: &'static str) -> Result<String, NetError> {
    // The netlink view would do too; /sys is per namespace when mounted for it,
    // but `ip netns exec` remounts it, and a plain setns does not: fall back to
    // an ioctl-free netlink query when the file is absent.
    let p = format!("/sys/class/net/{name}/{what}");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s),
        Err(e) => Err(NetError::Read {
            what,
            name: name.to_owned(),
            detail: format!("{p}: {e}"),
        }),
    }
}

/// The next hop the kernel would use toward `dst` from the uplink: `dst` itself
/// when on-link, else the default gateway.
pub fn next_hop(uplink: &UplinkInfo, dst: Ipv4Addr) -> Option<Ipv4Addr> {
    for (a, len) in &uplink.ipv4 {
        if Prefix::new(*a, *len).is_ok_and(|p| p.contains(dst)) {
            return Some(dst);
        }
    }
    default_gateway(&uplink.name)
}

fn default_gateway(dev: &str) -> Option<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[0] == dev && f[1] == "00000000" {
            let g = u32::from_str_radix(f[2], 16).ok()?;
            return Some(Ipv4Addr::from(u32::from_be(g)));
        }
    }
    None
}

/// The MAC the kernel's neighbour table holds for `ip` on `dev`, if resolved.
pub fn neighbour(dev: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&text, dev, ip)
}

fn parse_arp_table(text: &str, dev: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device
        if f.len() >= 6 && f[5] == dev && f[0].parse::<Ipv4Addr>().ok() == Some(ip) {
            let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap_or(0);
            if flags & 0x2 == 0 {
                return None; // incomplete
            }
            return f[3].parse().ok().filter(|m: &MacAddr| *m != MacAddr::ZERO);
        }
    }
    None
}

/// Makes the kernel resolve `ip`: one UDP datagram to the discard port. The
/// kernel queues it behind an ARP request; the neighbour entry appears once
/// the peer answers.
pub fn trigger_resolution(ip: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(&[], SocketAddrV4::new(ip, 9));
    }
}

/// The host port: a persistent TAP in the node's namespace through which the
/// node reaches its pods and pods reach everything outside the cluster.
pub struct HostPort {
    pub tap: Tap,
    pub mac: MacAddr,
}

/// Creates (or takes back) the host TAP, brings it up with `mtu` and
/// `queue_len` (its `txqueuelen`: in native mode the node's kernel queues the
/// pods' traffic from the uplink there), and routes the pod CIDR and the
/// cluster CIDR through it.
pub fn host_port(
    name: &str,
    mtu: u16,
    queue_len: u32,
    pod_cidr: Prefix,
    cluster_cidr: Prefix,
) -> Result<HostPort, NetError> {
    // Offloads as on pod ports: in native mode the node's kernel forwards the
    // pods' traffic through here, and superframes from the uplink (GSO from a
    // peer, GRO on a NIC) then reach Sluice whole instead of cut into
    // segments first, one read(2) each.
    let opts = crate::daemon::pod::tap_options();
    let tap = match Tap::attach(name, &opts) {
        Ok(t) => t,
        Err(TapError::NotFound { .. }) => {
            Tap::create(name, &opts).map_err(|source| NetError::HostTap {
                name: name.into(),
                source,
            })?
        }
        Err(source) => {
            return Err(NetError::HostTap {
                name: name.into(),
                source,
            })
        }
    };
    let link = |what: &'static str| {
        let name = name.to_owned();
        move |source| NetError::HostLink { name, what, source }
    };
    let mut nl = Netlink::open().map_err(link("netlink"))?;
    let idx = nl.ifindex(name).map_err(link("ifindex"))?;
    nl.set_mtu(idx, u32::from(mtu)).map_err(link("MTU"))?;
    nl.set_tx_queue_len(idx, queue_len)
        .map_err(link("txqueuelen"))?;
    nl.set_up(idx, true).map_err(link("up"))?;
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    for p in [cluster_cidr, pod_cidr] {
        nl.add_route_v4(&RouteV4::link(p.addr(), p.prefix_len(), idx))
            .map_err(link("route"))?;
    }
    let mac = tap.mac().map(MacAddr).map_err(|e| NetError::HostLink {
        name: name.into(),
        what: "MAC",
        source: LinkError::Socket(e),
    })?;
    Ok(HostPort { tap, mac })
}

/// The nftables table [`NativeBypass`] owns in the node's namespace.
pub const NATIVE_TABLE: &str = "sluice_native";

/// Native routing on the kernel-socket uplink: the uplink socket takes the
/// frames for this node's pods itself, and this table drops the kernel's own
/// copy of them, so the node's kernel does not also forward each one to the
/// host port (a second copy, and the larger part of the receive work).
///
/// The drop is in a prerouting chain at priority raw (-300), ahead of
/// connection tracking and NAT: it sees the destination the sender wrote.
/// Replies to connections the node masqueraded, and traffic to a node port
/// that kube-proxy translates to a pod, carry the node's address there; the
/// uplink socket does not take them, the kernel translates and forwards them
/// to the host port as before. That is why this is not an `ip rule`: routing
/// runs after NAT and would drop those too.
///
/// Installing replaces any table of that name (one left by a sluiced that was
/// killed); dropping the guard deletes it. Needs the `nft` program.
#[derive(Debug)]
pub struct NativeBypass {
    _private: (),
}

impl NativeBypass {
    /// Creates the table for `prefixes` arriving on `uplink`, replacing one of
    /// that name. An uplink name that would need quoting, or no prefix, is
    /// refused before `nft` runs.
    pub fn install(uplink: &str, prefixes: &[Prefix]) -> Result<NativeBypass, NetError> {
        if prefixes.is_empty() {
            return Err(NetError::Nft {
                detail: "no pod prefixes to take".into(),
            });
        }
        // The name goes into the script between quotes.
        if !uplink
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
        {
            return Err(NetError::Nft {
                detail: format!(
                    "uplink name {uplink:?} has characters other than letters, digits and ._-@"
                ),
            });
        }
        run_nft(&native_table_script(uplink, prefixes))?;
        Ok(NativeBypass { _private: () })
    }

    /// Deletes a table a killed sluiced left behind, where this one does not
    /// take pod traffic off the uplink socket (AF_XDP, a tunnel mode): it would
    /// drop the kernel's copy nobody else takes. Quiet when there is none or
    /// no `nft`.
    pub fn remove_stale() {
        let _ = run_nft(&format!(
            "table ip {NATIVE_TABLE}\ndelete table ip {NATIVE_TABLE}\n"
        ));
    }
}

impl Drop for NativeBypass {
    fn drop(&mut self) {
        if let Err(e) = run_nft(&format!("delete table ip {NATIVE_TABLE}\n")) {
            tracing::warn!(error = %e, "removing the native-routing drop rule");
        }
    }
}

/// The nft script that (re)creates [`NATIVE_TABLE`] in one transaction: the
/// empty declaration makes the delete succeed when there is none yet.
pub fn native_table_script(uplink: &str, prefixes: &[Prefix]) -> String {
    let set: Vec<String> = prefixes.iter().map(ToString::to_string).collect();
    format!(
        "table ip {t}\n\
         delete table ip {t}\n\
         table ip {t} {{\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tiifname \"{uplink}\" ip daddr {{ {set} }} counter drop\n\
         \t}}\n\
         }}\n",
        t = NATIVE_TABLE,
        set = set.join(", "),
    )
}

/// Runs `nft -f -` with `script` on its standard input.
fn run_nft(script: &str) -> Result<(), NetError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let fail = |detail: String| NetError::Nft { detail };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| fail(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "nft {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Lets the node's kernel forward (pods to the outside world, native mode).
pub fn enable_forwarding() -> std::io::Result<()> {
    let p = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(p)?.trim() != "1" {
        std::fs::write(p, "1")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_table_drops_only_what_the_uplink_brings_for_the_pods() {
        let p: Prefix = "198.19.2.0/24".parse().unwrap();
        let script = native_table_script("ul0", &[p]);
        assert!(script.starts_with("table ip sluice_native\ndelete table ip sluice_native\n"));
        assert!(
            script.contains("hook prerouting priority -300;"),
            "{script}"
        );
        assert!(
            script.contains("iifname \"ul0\" ip daddr { 198.19.2.0/24 } counter drop"),
            "{script}"
        );
        // Nothing is run for a name that would need quoting, or no prefix.
        for (name, prefixes) in [("ul\"0", vec![p]), ("ul0", vec![])] {
            let e = NativeBypass::install(name, &prefixes).unwrap_err();
            assert!(matches!(e, NetError::Nft { .. }), "{e}");
        }
    }

    #[test]
    fn arp_table_parsing() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 198.18.0.2       0x1         0x2         02:00:c6:12:00:02     *        ul0\n\
                 198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        ul0\n";
        assert_eq!(
            parse_arp_table(t, "ul0", Ipv4Addr::new(198, 18, 0, 2)),
            Some("02:00:c6:12:00:02".parse().unwrap())
        );
        assert_eq!(
            parse_arp_table(t, "ul0", Ipv4Addr::new(198, 18, 0, 3)),
            None
        );
        assert_eq!(
            parse_arp_table(t, "eth0", Ipv4Addr::new(198, 18, 0, 2)),
            None
        );
    }
}
