//! The etcd datastore: one thread with a current-thread tokio runtime runs the etcd client.
//!
//! A session (after each (re)connection) goes:
//!
//! 1. grant a lease of `node_lease_ttl_s` and keep it alive every third of that;
//! 2. assert the node's blocks (`blocks/<cidr>` = node name, created in a transaction that
//!    succeeds only while the key does not exist), put `nodes/<node>` and this node's endpoints
//!    under the lease, and write the objects applied here while etcd was away;
//! 3. range the whole prefix, diff it against what the agent was given last, hand the agent
//!    the differences, and watch from the range's revision + 1, applying events as they come.
//!    A cancelled or compacted watch repeats step 3 (no full rebuild, only the differences).
//!
//! Any error ends the session; the thread retries every [`RETRY`]. Meanwhile the agent keeps
//! forwarding on its last tables and allocating from its claimed blocks; endpoints are
//! re-published from the agent's state on the next session, objects from a queue.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use sluice_dataplane::table::Prefix;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::Notify;

use super::client::{block_owners, claim_block, connect, etcd_err};
pub use super::client::{initial_blocks, EtcdSettings, FIRST_BLOCK_WAIT, RETRY};

/// Most changes gathered from waiting watch responses before they are applied.
const MAX_BATCH: usize = 20_000;
use super::keys::{self, EndpointRecord, Key, NodeRecord, PREFIX};
use super::view::View;
use super::{save_blocks, Cmd, DatastoreError, Link};
use crate::daemon::agent::Agent;
use crate::k8s::ObjectKey;

/// The running etcd thread; dropping it stops the thread (the lease is left to expire, so a
/// restart within the TTL does not withdraw this node's routes from its peers).
pub struct Running {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the etcd thread and connects the agent to it.
pub fn start(s: EtcdSettings, agent: Arc<Agent>) -> Result<Running, DatastoreError> {
    let node_name = s.node_name.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    agent.set_datastore(Link::new(tx));
    let stop = Arc::new(Notify::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DatastoreError::Etcd {
            op: "start runtime",
            reason: e.to_string(),
        })?;
    let w = Worker {
        s,
        agent,
        rx,
        stop: stop.clone(),
        queued_objects: Vec::new(),
        view: View::new(&node_name),
        missing_since: BTreeMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("sluice-etcd".into())
        .spawn(move || rt.block_on(w.run()))
        .map_err(|e| DatastoreError::Etcd {
            op: "start thread",
            reason: e.to_string(),
        })?;
    Ok(Running {
        stop,
        thread: Some(thread),
    })
}

/// Why a session ended without an etcd error.
fn lost(op: &'static str, reason: &str) -> DatastoreError {
    DatastoreError::Etcd {
        op,
        reason: reason.to_owned(),
    }
}

struct Worker {
    s: EtcdSettings,
    agent: Arc<Agent>,
    rx: UnboundedReceiver<Cmd>,
    stop: Arc<Notify>,
    /// Objects applied or deleted here while etcd was unreachable, in order.
    queued_objects: Vec<(ObjectKey, Option<String>)>,
    /// What the agent was given, for diffs after a resync.
    view: View,
    /// Owners of blocks whose node record is gone, since when.
    missing_since: BTreeMap<String, Instant>,
}

impl Worker {
    async fn run(mut self) {
        let stop = self.stop.clone();
        loop {
            let r = tokio::select! {
                _ = stop.notified() => return,
                r = self.session() => r,
            };
            match r {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd session ended; forwarding continues, retrying")
                }
            }
            let until = tokio::time::Instant::now() + RETRY;
            loop {
                tokio::select! {
                    _ = stop.notified() => return,
                    _ = tokio::time::sleep_until(until) => break,
                    c = self.rx.recv() => match c {
                        None => return,
                        Some(c) => self.offline(c),
                    },
                }
            }
        }
    }

    fn unreachable(&self) -> DatastoreError {
        DatastoreError::Unreachable {
            endpoints: self.s.endpoints.join(","),
            reason: "not connected".into(),
        }
    }

    /// A request while etcd is away.
    fn offline(&mut self, c: Cmd) {
        match c {
            // Re-published from the agent's state when etcd returns.
            Cmd::Endpoint { .. } => {}
            Cmd::Object { key, doc } => self.queued_objects.push((key, doc)),
            Cmd::ClaimBlock(reply) => {
                let _ = reply.send(Err(self.unreachable()));
            }
            Cmd::RemoveNode { reply, .. } => {
                let _ = reply.send(Err(self.unreachable()));
            }
        }
    }

    async fn session(&mut self) -> Result<(), DatastoreError> {
        let mut c = connect(&self.s).await?;
        let lease = c
            .lease_grant(self.s.ttl_secs(), None)
            .await
            .map_err(etcd_err("lease grant"))?
            .id();
        let (mut keeper, mut ka) = c
            .lease_keep_alive(lease)
            .await
            .map_err(etcd_err("lease keepalive"))?;
        self.assert_blocks(&mut c).await?;
        let blocks = self.agent.blocks();
        self.put_node(&mut c, lease, &blocks).await?;
        self.sync_own_endpoints(&mut c, lease).await?;
        for (key, doc) in std::mem::take(&mut self.queued_objects) {
            self.write_object(&mut c, &key, doc).await?;
        }
        tracing::info!(node = %self.s.node_name, lease, "registered in etcd");
        let mut ka_tick =
            tokio::time::interval((self.s.lease_ttl / 3).max(Duration::from_millis(500)));
        let mut gc_tick = tokio::time::interval(self.s.lease_ttl);
        loop {
            let rev = self.resync(&mut c).await?;
            let mut w = c
                .watch(
                    PREFIX,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await
                .map_err(etcd_err("watch"))?;
            loop {
                tokio::select! {
                    cmd = self.rx.recv() => {
                        let Some(cmd) = cmd else { return Ok(()) };
                        self.online(&mut c, lease, cmd).await?;
                    }
                    _ = ka_tick.tick() => keeper.keep_alive().await.map_err(etcd_err("lease keepalive"))?,
                    m = ka.message() => match m.map_err(etcd_err("lease keepalive"))? {
                        Some(r) if r.ttl() <= 0 => return Err(lost("lease keepalive", "lease expired")),
                        Some(_) => {}
                        None => return Err(lost("lease keepalive", "stream closed")),
                    },
                    _ = gc_tick.tick() => self.collect_expired(&mut c).await?,
                    m = w.message() => {
                        let Some(first) = m.map_err(etcd_err("watch"))? else {
                            return Err(lost("watch", "stream closed"));
                        };
                        let mut next = Some(first);
                        let mut changes = Vec::new();
                        let mut lost_watch = false;
                        while let Some(r) = next.take() {
                            if r.canceled() || r.compact_revision() > 0 {
                                tracing::warn!(reason = r.cancel_reason(), compacted = r.compact_revision(), "watch lost; resyncing");
                                lost_watch = true;
                                break;
                            }
                            for e in r.events() {
                                let Some(kv) = e.kv() else { continue };
                                let value = (e.event_type() == EventType::Put).then(|| kv.value());
                                if self.view.event(kv.key_str().unwrap_or(""), value, &mut changes) {
                                    return Err(lost("watch", "this node's record was deleted"));
                                }
                            }
                            // Take what else has arrived already: a burst is applied (and the
                            // tables published) once.
                            if changes.len() < MAX_BATCH {
                                let ready = tokio::time::timeout(Duration::ZERO, w.message()).await;
                                if let Ok(m) = ready {
                                    let r = m.map_err(etcd_err("watch"))?;
                                    next = Some(r.ok_or_else(|| lost("watch", "stream closed"))?);
                                }
                            }
                        }
                        self.agent.apply_cluster(changes);
                        if lost_watch {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Makes sure etcd records this node as the owner of its blocks.
    async fn assert_blocks(&mut self, c: &mut Client) -> Result<(), DatastoreError> {
        for b in self.agent.blocks() {
            let k = Key::Block(b).path();
            let txn = Txn::new()
                .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(k.clone(), self.s.node_name.clone(), None)])
                .or_else([TxnOp::get(k, None)]);
            let r = c.txn(txn).await.map_err(etcd_err("assert block"))?;
            if r.succeeded() {
                continue;
            }
            let owner = r
                .op_responses()
                .into_iter()
                .find_map(|o| match o {
                    etcd_client::TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .and_then(|kv| kv.value_str().ok().map(str::to_owned)),
                    _ => None,
                })
                .unwrap_or_default();
            if owner != self.s.node_name {
                tracing::error!(block = %b, owner = %owner,
                    "this node allocates from a block etcd gives to another node: remove one of them with `sluicectl node remove`");
            }
        }
        Ok(())
    }

    async fn put_node(
        &mut self,
        c: &mut Client,
        lease: i64,
        blocks: &[Prefix],
    ) -> Result<(), DatastoreError> {
        let s = &self.s;
        let rec = NodeRecord::new(&s.node_name, s.node_ip, s.vtep_mac, s.mode, blocks);
        let v = serde_json::to_string(&rec).unwrap_or_default();
        c.put(
            Key::Node(s.node_name.clone()).path(),
            v,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(etcd_err("put node"))?;
        Ok(())
    }

    fn endpoint_key(&self, namespace: &str, name: &str) -> String {
        Key::Endpoint {
            node: self.s.node_name.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
        .path()
    }

    async fn put_endpoint(
        &mut self,
        c: &mut Client,
        lease: i64,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> Result<(), DatastoreError> {
        let rec = EndpointRecord {
            ip,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: self.s.node_name.clone(),
            labels: BTreeMap::new(),
        };
        let v = serde_json::to_string(&rec).unwrap_or_default();
        c.put(
            self.endpoint_key(namespace, name),
            v,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(etcd_err("put endpoint"))?;
        Ok(())
    }

    /// Puts every endpoint the agent holds and deletes the ones it no longer does.
    async fn sync_own_endpoints(
        &mut self,
        c: &mut Client,
        lease: i64,
    ) -> Result<(), DatastoreError> {
        let mine = keys::endpoints_of(&self.s.node_name);
        let resp = c
            .get(
                mine.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(etcd_err("range own endpoints"))?;
        let mut stale: BTreeSet<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok().map(str::to_owned))
            .collect();
        for (ns, name, ip) in self.agent.named_endpoints() {
            stale.remove(&self.endpoint_key(&ns, &name));
            self.put_endpoint(c, lease, &ns, &name, ip).await?;
        }
        for k in stale {
            c.delete(k, None)
                .await
                .map_err(etcd_err("delete endpoint"))?;
        }
        Ok(())
    }

    async fn write_object(
        &mut self,
        c: &mut Client,
        key: &ObjectKey,
        doc: Option<String>,
    ) -> Result<(), DatastoreError> {
        let k = Key::Object {
            kind: key.kind.as_str().to_owned(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        }
        .path();
        match doc {
            Some(d) => {
                c.put(k, d, None).await.map_err(etcd_err("put object"))?;
            }
            None => {
                c.delete(k, None).await.map_err(etcd_err("delete object"))?;
            }
        }
        Ok(())
    }

    /// A request while connected.
    async fn online(&mut self, c: &mut Client, lease: i64, cmd: Cmd) -> Result<(), DatastoreError> {
        match cmd {
            Cmd::Endpoint {
                namespace,
                name,
                ip: Some(ip),
            } => self.put_endpoint(c, lease, &namespace, &name, ip).await,
            Cmd::Endpoint {
                namespace,
                name,
                ip: None,
            } => {
                let k = self.endpoint_key(&namespace, &name);
                c.delete(k, None)
                    .await
                    .map_err(etcd_err("delete endpoint"))?;
                Ok(())
            }
            Cmd::Object { key, doc } => {
                let r = self.write_object(c, &key, doc.clone()).await;
                if r.is_err() {
                    self.queued_objects.push((key, doc));
                }
                r
            }
            Cmd::ClaimBlock(reply) => {
                let r = claim_block(c, &self.s).await;
                let r = match r {
                    Ok(b) => {
                        let mut all = self.agent.blocks();
                        all.push(b);
                        match save_blocks(&self.s.state_dir, &self.s.node_name, &all) {
                            Ok(()) => {
                                self.put_node(c, lease, &all).await?;
                                Ok(b)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                let failed_etcd = matches!(r, Err(DatastoreError::Etcd { .. }));
                let msg = r.as_ref().err().map(ToString::to_string);
                let _ = reply.send(r);
                match (failed_etcd, msg) {
                    (true, Some(m)) => Err(lost("claim block", &m)),
                    _ => Ok(()),
                }
            }
            Cmd::RemoveNode { name, reply } => {
                let r = self.remove_node(c, &name).await;
                let _ = reply.send(r);
                Ok(())
            }
        }
    }

    /// Deletes a node's record, endpoints and blocks.
    async fn remove_node(
        &mut self,
        c: &mut Client,
        name: &str,
    ) -> Result<Vec<Prefix>, DatastoreError> {
        if name == self.s.node_name {
            return Err(lost(
                "remove node",
                "refusing to remove this node itself: run it on another node",
            ));
        }
        c.delete(Key::Node(name.to_owned()).path(), None)
            .await
            .map_err(etcd_err("delete node"))?;
        c.delete(
            keys::endpoints_of(name),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd_err("delete endpoints"))?;
        self.release_blocks(c, name).await
    }

    /// Deletes the blocks `owner` holds (each only while it still holds it).
    async fn release_blocks(
        &mut self,
        c: &mut Client,
        owner: &str,
    ) -> Result<Vec<Prefix>, DatastoreError> {
        let mut released = Vec::new();
        for (b, o) in block_owners(c).await? {
            if o != owner {
                continue;
            }
            let k = Key::Block(b).path();
            let txn = Txn::new()
                .when([Compare::value(k.clone(), CompareOp::Equal, owner)])
                .and_then([TxnOp::delete(k, None)]);
            if c.txn(txn)
                .await
                .map_err(etcd_err("release block"))?
                .succeeded()
            {
                tracing::info!(block = %b, node = %owner, "pod block released");
                released.push(b);
            }
        }
        self.missing_since.remove(owner);
        Ok(released)
    }

    /// Releases the blocks of nodes whose record has been gone for the grace period.
    async fn collect_expired(&mut self, c: &mut Client) -> Result<(), DatastoreError> {
        let now = Instant::now();
        let owners: BTreeSet<String> = self.view.owners().values().cloned().collect();
        self.missing_since.retain(|o, _| owners.contains(o));
        for o in owners {
            if o == self.s.node_name || self.view.has_node(&o) {
                self.missing_since.remove(&o);
                continue;
            }
            let since = *self.missing_since.entry(o.clone()).or_insert(now);
            if now.duration_since(since) >= self.s.grace {
                tracing::info!(node = %o, "grace period over; releasing its blocks");
                self.release_blocks(c, &o).await?;
            }
        }
        Ok(())
    }

    /// Ranges the whole prefix and hands the agent what changed since it was last told.
    /// Returns the range's revision.
    async fn resync(&mut self, c: &mut Client) -> Result<i64, DatastoreError> {
        let resp = c
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("range"))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let kvs = resp
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?, kv.value())));
        let changes = self.view.resync(kvs);
        let (nodes, endpoints, objects) = self.view.counts();
        tracing::info!(
            revision = rev,
            nodes,
            endpoints,
            objects,
            changes = changes.len(),
            "etcd resync"
        );
        self.agent.apply_cluster(changes);
        Ok(rev)
    }
}
