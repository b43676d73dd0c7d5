//! `sluiced --recover`: rebuilding the node's endpoints from the kernel when the
//! state file and its backup are both unusable.
//!
//! Every pod TAP describes itself: the ADD that wires it sets its alias
//! (`IFLA_IFALIAS`) to a [`TapLabel`] last, once address and routes are in place.
//! Recovery scans every network namespace reachable on the host (`/run/netns/*`,
//! `/var/run/netns/*` and `/proc/*/ns/net`, deduplicated by namespace identity),
//! reads the labels of TUN/TAP links, and restores an endpoint only when the
//! kernel proves it: the label names this node, the link is a TAP under the
//! labelled name, its MAC is the one derived from the address, it holds the
//! address, the address is in the node's pod CIDR, and no other labelled TAP
//! claims the same address or attachment. Everything else is refused with a
//! message saying why; a refused address stays out of the state, so its pod
//! needs a new ADD.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sluice_dataplane::sys::link::{LinkSummary, Netlink, MAX_ALIAS_LEN};
use sluice_dataplane::sys::netns::NetNs;
use sluice_dataplane::table::Prefix;

use super::pod;
use crate::api::AttachmentKey;
use crate::store::EndpointRecord;

/// First word of every Sluice TAP alias; the version of the format.
pub const LABEL_TAG: &str = "sluice:v1";

/// The record a pod TAP carries in its alias:
/// `sluice:v1 node=NODE cid=CONTAINER if=IFNAME ip=ADDR netns=PATH`.
/// `netns=` comes last and runs to the end (a path may hold spaces); it is left
/// out when the whole would not fit in an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapLabel {
    /// The node whose sluiced made the TAP.
    pub node: String,
    pub key: AttachmentKey,
    pub ip: Ipv4Addr,
    /// The runtime's `CNI_NETNS`; empty when it did not fit.
    pub netns: String,
}

/// Why an alias that starts with [`LABEL_TAG`] is not a [`TapLabel`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TAP alias {alias:?} is not a Sluice label: {reason}")]
pub struct LabelError {
    pub alias: String,
    pub reason: String,
}

impl TapLabel {
    /// The alias text, at most [`MAX_ALIAS_LEN`] bytes.
    pub fn encode(&self) -> String {
        let head = format!(
            "{LABEL_TAG} node={} cid={} if={} ip={}",
            self.node, self.key.container_id, self.key.ifname, self.ip
        );
        let full = format!("{head} netns={}", self.netns);
        if full.len() <= MAX_ALIAS_LEN {
            full
        } else {
            head
        }
    }

    /// Reads an alias: `Ok(None)` when it is not Sluice's at all.
    pub fn parse(alias: &str) -> Result<Option<TapLabel>, LabelError> {
        let Some(rest) = alias.strip_prefix(LABEL_TAG) else {
            return Ok(None);
        };
        let bad = |reason: String| LabelError {
            alias: alias.to_owned(),
            reason,
        };
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Ok(None); // another tag that merely starts the same way
        }
        let (fields, netns) = match rest.split_once(" netns=") {
            Some((f, n)) => (f, n.to_owned()),
            None => (rest, String::new()),
        };
        let mut want: [(&str, Option<&str>); 4] =
            [("node", None), ("cid", None), ("if", None), ("ip", None)];
        for word in fields.split_whitespace() {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| bad(format!("{word:?}: expected key=value")))?;
            let slot = want
                .iter_mut()
                .find(|(name, _)| *name == k)
                .ok_or_else(|| {
                    bad(format!(
                        "unknown key {k:?}: expected node, cid, if, ip, netns"
                    ))
                })?;
            if slot.1.replace(v).is_some() {
                return Err(bad(format!("key {k:?} given twice")));
            }
        }
        let mut values = want.iter().map(|(name, v)| {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| bad(format!("{name}= is missing")))
        });
        let mut next = || values.next().unwrap_or_else(|| Err(bad("short".into())));
        let (node, cid, ifname, ip) = (next()?, next()?, next()?, next()?);
        let ip = ip
            .parse()
            .map_err(|_| bad(format!("ip={ip:?}: expected an IPv4 address")))?;
        Ok(Some(TapLabel {
            node: node.to_owned(),
            key: AttachmentKey {
                container_id: cid.to_owned(),
                ifname: ifname.to_owned(),
            },
            ip,
            netns,
        }))
    }
}

/// What [`rebuild`] found.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Endpoints the kernel proves, ready to restore.
    pub records: Vec<EndpointRecord>,
    /// One line per labelled TAP of this node that was not restored, and why.
    pub refused: Vec<String>,
    /// Network namespaces scanned.
    pub namespaces: usize,
}

/// A labelled TAP as found in one namespace.
struct Candidate {
    label: TapLabel,
    link: LinkSummary,
    /// Where the namespace was found (or the label's path, when that names it too).
    netns: String,
}

/// Scans the host's namespaces for the pod TAPs `node` labelled and returns
/// those the kernel proves (see the module documentation); `blocks` are the
/// node's pod address blocks.
pub fn rebuild(node: &str, blocks: &[Prefix], now_unix: u64) -> Rebuilt {
    let namespaces = reachable_namespaces();
    let mut out = Rebuilt {
        namespaces: namespaces.len(),
        ..Rebuilt::default()
    };
    let mut candidates = Vec::new();
    for (id, path) in &namespaces {
        let links = NetNs::open(path).map_err(|e| e.to_string()).and_then(|ns| {
            Netlink::open_in(&ns)
                .and_then(|mut nl| nl.links())
                .map_err(|e| e.to_string())
        });
        let links = match links {
            Ok(l) => l,
            Err(e) => {
                // A process that exited meanwhile, or a namespace we may not enter.
                tracing::debug!(netns = %path.display(), error = %e, "namespace skipped");
                continue;
            }
        };
        for link in links {
            let Some(alias) = link.alias.as_deref() else {
                continue;
            };
            let label = match TapLabel::parse(alias) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    out.refused
                        .push(format!("{} in {}: {e}", link.name, path.display()));
                    continue;
                }
            };
            if label.node != node {
                continue; // another node's pod, seen through a shared /run/netns
            }
            // The runtime's path, when it still names this namespace.
            let netns = if !label.netns.is_empty() && ns_id(Path::new(&label.netns)) == Some(*id) {
                label.netns.clone()
            } else {
                path.display().to_string()
            };
            candidates.push(Candidate { label, link, netns });
        }
    }

    let mut by_ip: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    let mut by_key: BTreeMap<&AttachmentKey, usize> = BTreeMap::new();
    for c in &candidates {
        *by_ip.entry(c.label.ip).or_default() += 1;
        *by_key.entry(&c.label.key).or_default() += 1;
    }
    for c in &candidates {
        let (l, ip) = (&c.label, c.label.ip);
        let what = format!(
            "container {} interface {} ({ip}) in {}",
            l.key.container_id, l.key.ifname, c.netns
        );
        let refuse = |why: String| format!("{what}: {why}; not restored");
        let mac = pod::pod_mac(ip);
        let problem = if by_ip[&ip] > 1 {
            Some(format!(
                "{ip} is claimed by {} labelled TAPs: cannot prove which holds it",
                by_ip[&ip]
            ))
        } else if by_key[&l.key] > 1 {
            Some(format!(
                "the attachment is claimed by {} labelled TAPs",
                by_key[&l.key]
            ))
        } else if !blocks.iter().any(|b| b.contains(ip)) {
            let list: Vec<String> = blocks.iter().map(Prefix::to_string).collect();
            Some(format!(
                "{ip} is outside the node's pod blocks ({})",
                list.join(", ")
            ))
        } else if c.link.kind.as_deref() != Some("tun") {
            Some(format!(
                "link {} is {}, expected a TAP",
                c.link.name,
                c.link.kind.as_deref().unwrap_or("of unknown kind")
            ))
        } else if c.link.name != l.key.ifname {
            Some(format!(
                "the link is called {}, expected {}",
                c.link.name, l.key.ifname
            ))
        } else if c.link.mac != Some(mac.0) {
            Some(format!("the link's MAC is not {mac}"))
        } else {
            pod::check(&c.netns, &l.key.ifname, ip, mac).err()
        };
        if let Some(why) = problem {
            out.refused.push(refuse(why));
            continue;
        }
        out.records.push(EndpointRecord {
            key: l.key.clone(),
            netns: c.netns.clone(),
            ifname: l.key.ifname.clone(),
            ip,
            mac: mac.to_string(),
            tap: l.key.ifname.clone(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            created_unix: now_unix,
        });
    }
    out.records.sort_by_key(|r| r.ip);
    out
}

/// The identity (device, inode) of the namespace file at `path`.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Every network namespace reachable through the file system, once each: named
/// ones first (their paths outlive processes), then those of processes.
fn reachable_namespaces() -> Vec<((u64, u64), PathBuf)> {
    let mut paths = Vec::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(entries) = fs::read_dir(dir) {
            let mut named: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            named.sort();
            paths.extend(named);
        }
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        pids.sort_unstable();
        paths.extend(
            pids.iter()
                .map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))),
        );
    }
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for p in paths {
        if let Some(id) = ns_id(&p) {
            if seen.insert(id, ()).is_none() {
                out.push((id, p));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(netns: &str) -> TapLabel {
        TapLabel {
            node: "node-a".into(),
            key: AttachmentKey {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
            },
            ip: Ipv4Addr::new(198, 19, 1, 5),
            netns: netns.into(),
        }
    }

    #[test]
    fn labels_round_trip() {
        let l = label("/var/run/netns/cni-1 with space");
        let text = l.encode();
        assert_eq!(
            text,
            "sluice:v1 node=node-a cid=c0ffee if=eth0 ip=198.19.1.5 netns=/var/run/netns/cni-1 with space"
        );
        assert_eq!(TapLabel::parse(&text), Ok(Some(l)));
    }

    #[test]
    fn a_long_netns_is_left_out() {
        let l = label(&format!("/run/netns/{}", "x".repeat(300)));
        let text = l.encode();
        assert!(text.len() <= MAX_ALIAS_LEN);
        assert_eq!(TapLabel::parse(&text).unwrap().unwrap().netns, "");
    }

    #[test]
    fn foreign_and_malformed_aliases() {
        assert_eq!(TapLabel::parse("uplink to rack 3"), Ok(None));
        assert_eq!(TapLabel::parse("sluice:v10 node=a"), Ok(None));
        for bad in [
            "sluice:v1",
            "sluice:v1 node=a cid=b if=eth0",
            "sluice:v1 node=a cid=b if=eth0 ip=300.1.1.1",
            "sluice:v1 node=a cid=b if=eth0 ip=198.19.1.5 colour=red",
            "sluice:v1 node=a node=b cid=b if=eth0 ip=198.19.1.5",
            "sluice:v1 node=a cid= if=eth0 ip=198.19.1.5",
            "sluice:v1 node cid=b if=eth0 ip=198.19.1.5",
        ] {
            let e = TapLabel::parse(bad).unwrap_err();
            assert_eq!(e.alias, bad);
        }
    }
}
