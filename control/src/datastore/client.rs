//! Connecting to etcd and claiming pod blocks: the parts a node needs before its agent
//! exists (its first block) as well as after (more blocks, from the etcd thread).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};
use sluice_dataplane::table::{Mode, Prefix};
use sluice_dataplane::wire::MacAddr;

use super::keys::{self, Key};
use super::{load_blocks, save_blocks, DatastoreError};
use crate::config::{DatastoreConfig, Resolved};

/// Pause between two connection attempts.
pub const RETRY: Duration = Duration::from_millis(500);

/// How long the first start waits for etcd when the node holds no block yet.
pub const FIRST_BLOCK_WAIT: Duration = Duration::from_secs(30);

/// What the etcd thread needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub mode: Mode,
    pub cluster_cidr: Prefix,
    pub block_size: u8,
    pub lease_ttl: Duration,
    pub grace: Duration,
    /// Where the blocks file lives (the node's state directory).
    pub state_dir: PathBuf,
}

impl EtcdSettings {
    /// The etcd settings of a resolved configuration; `None` with the file datastore.
    pub fn from_resolved(r: &Resolved) -> Option<EtcdSettings> {
        let DatastoreConfig::Etcd(e) = &r.datastore else {
            return None;
        };
        Some(EtcdSettings {
            endpoints: e.endpoints.clone(),
            ca: e.ca.clone(),
            cert: e.cert.clone(),
            key: e.key.clone(),
            node_name: r.node_name.clone(),
            node_ip: r.node_ip,
            vtep_mac: r.vtep_mac,
            mode: r.mode,
            cluster_cidr: r.cluster_cidr,
            block_size: r.block_size,
            lease_ttl: r.node_lease_ttl,
            grace: r.node_grace_period,
            state_dir: r.state_dir.clone(),
        })
    }

    pub(crate) fn ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

pub(crate) fn etcd_err(op: &'static str) -> impl Fn(etcd_client::Error) -> DatastoreError {
    move |e| DatastoreError::Etcd {
        op,
        reason: e.to_string(),
    }
}

fn tls_options(s: &EtcdSettings) -> Result<Option<TlsOptions>, DatastoreError> {
    if s.ca.is_none() && s.cert.is_none() {
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| DatastoreError::Tls {
            path: p.clone(),
            reason: e.to_string(),
        })
    };
    let mut t = TlsOptions::new();
    if let Some(ca) = &s.ca {
        t = t.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(c), Some(k)) = (&s.cert, &s.key) {
        t = t.identity(Identity::from_pem(read(c)?, read(k)?));
    }
    Ok(Some(t))
}

pub(crate) async fn connect(s: &EtcdSettings) -> Result<Client, DatastoreError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        // HTTP/2 pings notice a dead member while the watch is quiet.
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(t) = tls_options(s)? {
        opts = opts.with_tls(t);
    }
    Client::connect(&s.endpoints, Some(opts))
        .await
        .map_err(|e| DatastoreError::Unreachable {
            endpoints: s.endpoints.join(","),
            reason: e.to_string(),
        })
}

/// Blocks held in etcd, by block: their owner.
pub(crate) async fn block_owners(
    c: &mut Client,
) -> Result<BTreeMap<Prefix, String>, DatastoreError> {
    let resp = c
        .get(
            keys::prefix("blocks"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd_err("range blocks"))?;
    Ok(resp
        .kvs()
        .iter()
        .filter_map(|kv| match Key::parse(kv.key_str().ok()?).ok()? {
            Key::Block(b) => Some((b, kv.value_str().ok()?.to_owned())),
            _ => None,
        })
        .collect())
}

/// Claims the first free block of `block_size` in `cluster_cidr`. The transaction creates the
/// key only if it does not exist, so two nodes never hold one block.
pub(crate) async fn claim_block(
    c: &mut Client,
    s: &EtcdSettings,
) -> Result<Prefix, DatastoreError> {
    let taken = block_owners(c).await?;
    for cand in keys::candidate_blocks(s.cluster_cidr, s.block_size) {
        if taken
            .keys()
            .any(|t| t.contains_prefix(&cand) || cand.contains_prefix(t))
        {
            continue;
        }
        let k = Key::Block(cand).path();
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, s.node_name.clone(), None)]);
        if c.txn(txn)
            .await
            .map_err(etcd_err("claim block"))?
            .succeeded()
        {
            tracing::info!(block = %cand, "pod block claimed in etcd");
            return Ok(cand);
        }
    }
    Err(DatastoreError::NoFreeBlock {
        cluster_cidr: s.cluster_cidr,
        block_size: s.block_size,
    })
}

/// The node's pod blocks at start, first one primary: the configured `pod_cidr` first if set,
/// then those remembered in the state directory; a node holding none finds the ones etcd says
/// it owns, or claims one (waiting up to [`FIRST_BLOCK_WAIT`] for etcd).
pub fn initial_blocks(
    s: &EtcdSettings,
    configured: Option<Prefix>,
) -> Result<Vec<Prefix>, DatastoreError> {
    let mut blocks = load_blocks(&s.state_dir, &s.node_name)?;
    if let Some(p) = configured {
        blocks.retain(|b| *b != p);
        blocks.insert(0, p);
    }
    if blocks.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DatastoreError::Etcd {
                op: "start runtime",
                reason: e.to_string(),
            })?;
        blocks = rt.block_on(async {
            let start = Instant::now();
            loop {
                let r = async {
                    let mut c = connect(s).await?;
                    let owned: Vec<Prefix> = block_owners(&mut c)
                        .await?
                        .into_iter()
                        .filter(|(_, o)| *o == s.node_name)
                        .map(|(b, _)| b)
                        .collect();
                    if !owned.is_empty() {
                        tracing::info!(blocks = ?owned, "pod blocks this node owns in etcd");
                        return Ok(owned);
                    }
                    claim_block(&mut c, s).await.map(|b| vec![b])
                }
                .await;
                match r {
                    Ok(b) => return Ok(b),
                    Err(e @ DatastoreError::NoFreeBlock { .. }) => return Err(e),
                    Err(e) if start.elapsed() >= FIRST_BLOCK_WAIT => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "no pod block yet; retrying");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        })?;
    }
    save_blocks(&s.state_dir, &s.node_name, &blocks)?;
    Ok(blocks)
}
