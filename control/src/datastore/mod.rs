//! Where cluster-wide state lives.
//!
//! Two stores sit behind the same agent:
//!
//! * the **file** store (the default): this node's state file ([`crate::store`]) plus the
//!   static `peers` of the configuration; nothing is shared;
//! * **etcd** ([`etcd`]): node records, pod blocks, endpoints and applied objects are shared by
//!   every node (key layout in [`keys`]).
//!
//! The etcd client runs on a thread of its own. The agent never waits on it, with one
//! exception: a CNI ADD on a node whose blocks are all full waits (bounded) for a new block.
//! The agent tells the thread what to publish through a [`Link`]; the thread hands the agent
//! what it saw as batches of [`ClusterChange`]s ([`crate::daemon::agent::Agent::apply_cluster`]).

mod client;
pub mod etcd;
pub mod keys;
pub mod view;

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_dataplane::table::Prefix;

use crate::daemon::agent::Peer;
use crate::k8s::ObjectKey;

/// The file beside the node state that remembers the blocks this node claimed, so a restart
/// or an etcd outage keeps them.
pub const BLOCKS_FILE: &str = "blocks.json";

/// How long a CNI ADD waits for a new block before failing.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with the cluster datastore.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("etcd unreachable at {endpoints}: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd request {op}: {reason}")]
    Etcd { op: &'static str, reason: String },
    #[error("no free block of /{block_size} left in cluster_cidr {cluster_cidr}")]
    NoFreeBlock {
        cluster_cidr: Prefix,
        block_size: u8,
    },
    #[error("{path}: {reason}")]
    BlocksFile { path: PathBuf, reason: String },
    #[error("TLS file {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("the datastore thread is not running")]
    Stopped,
    #[error("the datastore did not answer within {0:?}")]
    Timeout(Duration),
}

/// A change seen in the datastore, for the agent to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterChange {
    /// A node joined or changed (never this node).
    Peer(Peer),
    /// A node's record is gone (its lease expired or it was removed).
    PeerGone(String),
    /// A pod on another node appeared (`ip` set), moved, or went away (`None`).
    Endpoint {
        namespace: String,
        name: String,
        ip: Option<Ipv4Addr>,
    },
    /// An object applied anywhere in the cluster, as a JSON document.
    Object(String),
    /// An object deleted anywhere in the cluster.
    ObjectGone(ObjectKey),
}

/// A request from the agent to the datastore thread.
#[derive(Debug)]
pub(crate) enum Cmd {
    Endpoint {
        namespace: String,
        name: String,
        ip: Option<Ipv4Addr>,
    },
    Object {
        key: ObjectKey,
        doc: Option<String>,
    },
    ClaimBlock(mpsc::SyncSender<Result<Prefix, DatastoreError>>),
    RemoveNode {
        name: String,
        reply: mpsc::SyncSender<Result<Vec<Prefix>, DatastoreError>>,
    },
}

/// The agent's handle on the datastore thread. Sending never blocks.
#[derive(Debug, Clone)]
pub struct Link {
    tx: tokio::sync::mpsc::UnboundedSender<Cmd>,
}

impl Link {
    pub(crate) fn new(tx: tokio::sync::mpsc::UnboundedSender<Cmd>) -> Link {
        Link { tx }
    }

    fn send(&self, c: Cmd) {
        if self.tx.send(c).is_err() {
            tracing::debug!("datastore thread gone; change not published");
        }
    }

    /// A pod attached here: publish it.
    pub fn endpoint_up(&self, namespace: &str, name: &str, ip: Ipv4Addr) {
        self.send(Cmd::Endpoint {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip: Some(ip),
        });
    }

    /// A pod detached here: withdraw it.
    pub fn endpoint_down(&self, namespace: &str, name: &str) {
        self.send(Cmd::Endpoint {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip: None,
        });
    }

    /// An object applied (`doc` set) or deleted (`None`) through this node's API.
    pub fn object(&self, key: &ObjectKey, doc: Option<String>) {
        self.send(Cmd::Object {
            key: key.clone(),
            doc,
        });
    }

    /// Claims one more block for this node; waits at most [`CLAIM_TIMEOUT`].
    pub fn claim_block(&self) -> Result<Prefix, DatastoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Cmd::ClaimBlock(tx))
            .map_err(|_| DatastoreError::Stopped)?;
        rx.recv_timeout(CLAIM_TIMEOUT)
            .map_err(|_| DatastoreError::Timeout(CLAIM_TIMEOUT))?
    }

    /// Removes a node for good: its record, endpoints and blocks. Returns the blocks released.
    pub fn remove_node(&self, name: &str) -> Result<Vec<Prefix>, DatastoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Cmd::RemoveNode {
                name: name.to_owned(),
                reply: tx,
            })
            .map_err(|_| DatastoreError::Stopped)?;
        rx.recv_timeout(CLAIM_TIMEOUT)
            .map_err(|_| DatastoreError::Timeout(CLAIM_TIMEOUT))?
    }
}

/// The blocks file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlocksRecord {
    node: String,
    blocks: Vec<String>,
}

/// Reads the blocks this node claimed before (empty when none were). The first one is the
/// node's primary pod CIDR.
pub fn load_blocks(state_dir: &Path, node: &str) -> Result<Vec<Prefix>, DatastoreError> {
    let path = state_dir.join(BLOCKS_FILE);
    let bad = |reason: String| DatastoreError::BlocksFile {
        path: path.clone(),
        reason,
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let rec: BlocksRecord = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if rec.node != node {
        return Err(bad(format!(
            "written by node {:?}: expected {node:?} (a state directory belongs to one node)",
            rec.node
        )));
    }
    rec.blocks
        .iter()
        .map(|b| {
            b.parse()
                .map_err(|_| bad(format!("block {b:?}: expected an IPv4 prefix")))
        })
        .collect()
}

/// Writes the blocks file crash-safely (temporary file, fsync, rename).
pub fn save_blocks(state_dir: &Path, node: &str, blocks: &[Prefix]) -> Result<(), DatastoreError> {
    let path = state_dir.join(BLOCKS_FILE);
    let bad = |reason: String| DatastoreError::BlocksFile {
        path: path.clone(),
        reason,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| bad(e.to_string()))?;
    let rec = BlocksRecord {
        node: node.to_owned(),
        blocks: blocks.iter().map(Prefix::to_string).collect(),
    };
    let text = serde_json::to_string_pretty(&rec).map_err(|e| bad(e.to_string()))?;
    let tmp = state_dir.join(format!("{BLOCKS_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_file_round_trips_and_names_its_node() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_blocks(d.path(), "n1").unwrap().is_empty());
        let b: Vec<Prefix> = vec![
            "198.19.0.64/26".parse().unwrap(),
            "198.19.0.0/26".parse().unwrap(),
        ];
        save_blocks(d.path(), "n1", &b).unwrap();
        assert_eq!(load_blocks(d.path(), "n1").unwrap(), b);
        let e = load_blocks(d.path(), "n2").unwrap_err().to_string();
        assert!(e.contains("n1") && e.contains("n2"), "{e}");
        fs::write(
            d.path().join(BLOCKS_FILE),
            "{\"node\":\"n1\",\"blocks\":[\"x\"]}",
        )
        .unwrap();
        let e = load_blocks(d.path(), "n1").unwrap_err().to_string();
        assert!(e.contains("\"x\""), "{e}");
    }
}
