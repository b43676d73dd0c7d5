//! The etcd key layout and the JSON records stored under it.
//!
//! Every key lives under the versioned prefix [`PREFIX`], so a later layout can
//! sit beside this one during an upgrade:
//!
//! | key | value | lifetime |
//! | --- | --- | --- |
//! | `nodes/<node>` | [`NodeRecord`] | the node's lease |
//! | `blocks/<cidr>` | the owning node's name | until `sluicectl node remove` or the grace period |
//! | `endpoints/<node>/<ns>/<pod>` | [`EndpointRecord`] | the node's lease |
//! | `objects/<kind>/<ns>/<name>` | the object as JSON (`ns` is `-` for cluster objects) | until deleted |

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sluice_dataplane::table::{Mode, Prefix};
use sluice_dataplane::wire::MacAddr;

/// Where all of Sluice's keys live.
pub const PREFIX: &str = "/sluice/v1/";

/// `ns` part of an object key for objects without a namespace.
const NO_NAMESPACE: &str = "-";

/// A key or value under [`PREFIX`] that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {key:?}: expected {expected}")]
    BadKey { key: String, expected: &'static str },
    #[error("value of {key}: {reason}")]
    BadValue { key: String, reason: String },
}

/// A node's record: how to reach it and which pod blocks it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub mode: String,
    pub blocks: Vec<String>,
}

impl NodeRecord {
    pub fn new(
        name: &str,
        node_ip: Ipv4Addr,
        vtep_mac: MacAddr,
        mode: Mode,
        blocks: &[Prefix],
    ) -> Self {
        NodeRecord {
            name: name.to_owned(),
            node_ip,
            vtep_mac: vtep_mac.to_string(),
            mode: mode.as_str().to_owned(),
            blocks: blocks.iter().map(Prefix::to_string).collect(),
        }
    }

    /// The parts a peer needs, checked: (vtep MAC, mode, blocks).
    pub fn parse_parts(&self) -> Result<(MacAddr, Mode, Vec<Prefix>), String> {
        let mac = self
            .vtep_mac
            .parse()
            .map_err(|_| format!("vtep_mac {:?}: expected a MAC address", self.vtep_mac))?;
        let mode = self
            .mode
            .parse()
            .map_err(|_| format!("mode {:?}: expected vxlan, ipip or native", self.mode))?;
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                b.parse()
                    .map_err(|_| format!("block {b:?}: expected an IPv4 prefix"))
            })
            .collect::<Result<Vec<Prefix>, String>>()?;
        if blocks.is_empty() {
            return Err("blocks: expected at least one pod block".into());
        }
        Ok((mac, mode, blocks))
    }
}

/// A pod attached on some node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub name: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a key under [`PREFIX`] names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Node(String),
    Block(Prefix),
    Endpoint {
        node: String,
        namespace: String,
        name: String,
    },
    Object {
        kind: String,
        namespace: Option<String>,
        name: String,
    },
}

impl Key {
    /// The full etcd key.
    pub fn path(&self) -> String {
        match self {
            Key::Node(n) => format!("{PREFIX}nodes/{n}"),
            Key::Block(b) => format!("{PREFIX}blocks/{b}"),
            Key::Endpoint {
                node,
                namespace,
                name,
            } => {
                format!("{PREFIX}endpoints/{node}/{namespace}/{name}")
            }
            Key::Object {
                kind,
                namespace,
                name,
            } => format!(
                "{PREFIX}objects/{kind}/{}/{name}",
                namespace.as_deref().unwrap_or(NO_NAMESPACE)
            ),
        }
    }

    /// Reads a full etcd key.
    pub fn parse(key: &str) -> Result<Key, KeyError> {
        let bad = |expected| KeyError::BadKey {
            key: key.to_owned(),
            expected,
        };
        let rest = key
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("a key under /sluice/v1/"))?;
        let (kind, rest) = rest
            .split_once('/')
            .ok_or_else(|| bad("nodes/, blocks/, endpoints/ or objects/ after the prefix"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let ok = |s: &&str| !s.is_empty();
        match kind {
            "nodes" if parts.len() == 1 && parts.iter().all(ok) => Ok(Key::Node(rest.to_owned())),
            "blocks" => rest
                .parse()
                .map(Key::Block)
                .map_err(|_| bad("blocks/<IPv4 prefix>")),
            "endpoints" if parts.len() == 3 && parts.iter().all(ok) => Ok(Key::Endpoint {
                node: parts[0].to_owned(),
                namespace: parts[1].to_owned(),
                name: parts[2].to_owned(),
            }),
            "objects" if parts.len() == 3 && parts.iter().all(ok) => Ok(Key::Object {
                kind: parts[0].to_owned(),
                namespace: (parts[1] != NO_NAMESPACE).then(|| parts[1].to_owned()),
                name: parts[2].to_owned(),
            }),
            _ => Err(bad(
                "nodes/<node>, blocks/<cidr>, endpoints/<node>/<ns>/<pod> or objects/<kind>/<ns>/<name>",
            )),
        }
    }
}

/// The prefix of one kind of key, e.g. `prefix("blocks")`.
pub fn prefix(kind: &str) -> String {
    format!("{PREFIX}{kind}/")
}

/// The prefix of one node's endpoints.
pub fn endpoints_of(node: &str) -> String {
    format!("{PREFIX}endpoints/{node}/")
}

/// Decodes a JSON value stored at `key`.
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, KeyError> {
    serde_json::from_slice(value).map_err(|e| KeyError::BadValue {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// The blocks of `block_len` inside `range`, in address order.
pub fn candidate_blocks(range: Prefix, block_len: u8) -> impl Iterator<Item = Prefix> {
    let shift = block_len.saturating_sub(range.prefix_len()).min(31);
    let count: u64 = 1u64 << shift;
    let step: u64 = 1u64 << (32 - u32::from(block_len.min(32)));
    let base = u64::from(range.addr_u32());
    (0..count).filter_map(move |i| {
        let addr = u32::try_from(base + i * step).ok()?;
        Prefix::new(Ipv4Addr::from(addr), block_len).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = [
            Key::Node("node1".into()),
            Key::Block("198.19.0.64/26".parse().unwrap()),
            Key::Endpoint {
                node: "node1".into(),
                namespace: "default".into(),
                name: "web".into(),
            },
            Key::Object {
                kind: "NetworkPolicy".into(),
                namespace: Some("default".into()),
                name: "deny".into(),
            },
            Key::Object {
                kind: "Namespace".into(),
                namespace: None,
                name: "prod".into(),
            },
        ];
        for k in keys {
            assert_eq!(Key::parse(&k.path()), Ok(k.clone()), "{}", k.path());
        }
    }

    #[test]
    fn bad_keys_are_errors() {
        for k in [
            "/other/nodes/a",
            "/sluice/v1/nodes",
            "/sluice/v1/nodes/a/b",
            "/sluice/v1/blocks/300.1.0.0/26",
            "/sluice/v1/endpoints/a/b",
            "/sluice/v1/endpoints/a//c",
            "/sluice/v1/what/a",
        ] {
            assert!(Key::parse(k).is_err(), "{k}");
        }
    }

    #[test]
    fn candidates_cover_the_range_in_order() {
        let r: Prefix = "198.19.0.0/16".parse().unwrap();
        let v: Vec<Prefix> = candidate_blocks(r, 26).collect();
        assert_eq!(v.len(), 1024);
        assert_eq!(v[0].to_string(), "198.19.0.0/26");
        assert_eq!(v[1].to_string(), "198.19.0.64/26");
        assert_eq!(v[1023].to_string(), "198.19.255.192/26");
        let one: Vec<Prefix> = candidate_blocks(r, 16).collect();
        assert_eq!(one, vec![r]);
    }

    #[test]
    fn node_record_checks_its_parts() {
        let r = NodeRecord::new(
            "n1",
            Ipv4Addr::new(198, 18, 0, 1),
            MacAddr([2, 0, 0, 0, 0, 1]),
            Mode::Vxlan,
            &["198.19.0.0/26".parse().unwrap()],
        );
        assert!(r.parse_parts().is_ok());
        let mut bad = r.clone();
        bad.mode = "gre".into();
        assert!(bad.parse_parts().unwrap_err().contains("gre"));
        let mut bad = r;
        bad.blocks.clear();
        assert!(bad.parse_parts().is_err());
    }
}
