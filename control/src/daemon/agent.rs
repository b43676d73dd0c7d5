//! The node agent: the single owner of the node's desired state (attachments,
//! addresses, peers, applied objects). It persists that state, turns it into
//! dataplane tables, and serves the API. Every change goes through one lock;
//! the fast path never takes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice_dataplane::buf::PortId;
use sluice_dataplane::drop::DropReason;
use sluice_dataplane::runtime::Runtime;
use sluice_dataplane::stage::Counters;
use sluice_dataplane::table::{
    Endpoint, EndpointTable, Mode, NextHop, NodeParams, Owner, Prefix, RouteTable, TableHandle,
    Tables, Tunnel, TunnelId, TunnelTable, GATEWAY_IP,
};
use sluice_dataplane::wire::MacAddr;

use super::net::{self, UplinkInfo};
use super::pod;
use super::Settings;
use crate::api::{
    code, Answer, ApiError, Attachment, AttachmentKey, CniAttach, CniDetach, Request, RouteSpec,
};
use crate::ipam::{Ipam, IpamError};
use crate::k8s::{self, Change, ClusterObjects, NodeInfo, Object};
use crate::policy;
use crate::store::{EndpointRecord, LoadOutcome, StateFile, Store};

/// A peer node: where its pods are and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Prefix,
    /// Further pod blocks of the peer (etcd datastore: a node claims more as it fills).
    pub more_cidrs: Vec<Prefix>,
    pub vtep_mac: MacAddr,
    /// How to reach it (the node's mode unless the peer says otherwise).
    pub mode: Mode,
    /// Where the peer came from: "config", "api" or "etcd".
    pub source: &'static str,
}

/// A local attachment.
#[derive(Debug, Clone)]
struct Ep {
    rec: EndpointRecord,
    mac: MacAddr,
    /// `None` while its namespace is gone (kept until DEL or GC frees it).
    port: Option<PortId>,
}

struct State {
    store: Store,
    file: StateFile,
    ipam: Ipam,
    eps: BTreeMap<AttachmentKey, Ep>,
    free_ports: BTreeSet<u16>,
    next_port: u16,
    peers: BTreeMap<String, Peer>,
    /// Resolved next-hop MACs of peers, by peer node IP.
    neigh: BTreeMap<Ipv4Addr, MacAddr>,
    last_error: Option<String>,
    cni_ops: BTreeMap<&'static str, u64>,
    /// Kubernetes objects applied through the API.
    objects: ClusterObjects,
    /// Attachments whose ADD is wiring the interface right now.
    pending: BTreeSet<AttachmentKey>,
    /// NetworkPolicy compiler, fed from the applied objects and attachments.
    policy: policy::Compiler,
    /// Pods attached on other nodes (etcd datastore), by pod.
    remote_eps: BTreeMap<policy::PodKey, Ipv4Addr>,
}

/// An attachment taken out of the state; its interface still to delete.
struct Removed {
    ep: Ep,
    port: Option<sluice_dataplane::runtime::BoxPort>,
}

impl Removed {
    /// Deletes the pod's interface (or whatever is left of it).
    fn destroy(self) {
        match self.port {
            Some(p) => {
                if let Err(e) = p.destroy() {
                    tracing::debug!(error = %e, "TAP already gone");
                }
            }
            None => {
                if let Ok(t) = pod::reattach(&self.ep.rec.netns, &self.ep.rec.ifname) {
                    let _ = t.delete();
                }
            }
        }
    }
}

/// The agent, shared by the API server threads and the control loop.
pub struct Agent {
    pub settings: Settings,
    pub uplink: UplinkInfo,
    pub tables: TableHandle,
    pub runtime: Runtime,
    pub backend: String,
    pub backend_reason: String,
    host_mac: Option<MacAddr>,
    started: Instant,
    state: Mutex<State>,
    /// The cluster datastore (etcd), when the node uses one.
    datastore: std::sync::OnceLock<crate::datastore::Link>,
}

type ApiResult = Result<Answer, ApiError>;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    /// Opens the state, restores attachments (re-attaching their TAPs) and
    /// publishes the first tables.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        uplink: UplinkInfo,
        tables: TableHandle,
        runtime: Runtime,
        backend: String,
        backend_reason: String,
        host_mac: Option<MacAddr>,
    ) -> Result<Arc<Agent>, super::DaemonError> {
        let open = if settings.recover {
            Store::open_or_rebuild
        } else {
            Store::open
        };
        let (store, mut file) = open(&settings.state_dir, &settings.node_name, settings.pod_cidr)?;
        let outcome = format!("{:?}", store.outcome());
        let rebuilding = matches!(store.outcome(), LoadOutcome::Rebuild { .. });
        if rebuilding {
            let blocks: Vec<Prefix> = std::iter::once(settings.pod_cidr)
                .chain(settings.more_blocks.iter().copied())
                .collect();
            let found = super::recover::rebuild(&settings.node_name, &blocks, now_unix());
            for why in &found.refused {
                tracing::error!("recover: {why}");
            }
            tracing::warn!(
                namespaces = found.namespaces,
                restored = found.records.len(),
                refused = found.refused.len(),
                "recover: endpoints rebuilt from the pod TAPs; objects applied through the API \
                 were in the lost state and must be applied again"
            );
            file.endpoints = found.records;
        } else if settings.recover {
            tracing::info!(state = %outcome, "recover: the state loaded, nothing to rebuild");
        }
        let reserved: Vec<Ipv4Addr> = Vec::new();
        let blocks = std::iter::once(settings.pod_cidr).chain(settings.more_blocks.iter().copied());
        let ipam =
            Ipam::new(blocks, reserved).map_err(|e| super::DaemonError::Ipam(e.to_string()))?;
        let mut st = State {
            store,
            file,
            ipam,
            eps: BTreeMap::new(),
            free_ports: BTreeSet::new(),
            next_port: PortId::FIRST_POD.0,
            peers: BTreeMap::new(),
            neigh: BTreeMap::new(),
            last_error: None,
            cni_ops: BTreeMap::new(),
            objects: ClusterObjects::new(),
            pending: BTreeSet::new(),
            policy: policy::Compiler::new(),
            remote_eps: BTreeMap::new(),
        };
        for (i, doc) in st.file.applied_objects.clone().iter().enumerate() {
            match k8s::parse_documents(doc) {
                Ok(objs) => objs.into_iter().for_each(|o| {
                    if let Err(e) = feed_policy(&mut st.policy, &o, true) {
                        tracing::warn!(object = %o.key(), error = %e, "stored object not compiled");
                    }
                    st.objects.apply(o);
                }),
                Err(e) => tracing::warn!(index = i, error = %e, "stored object skipped"),
            }
        }
        st.ipam.set_last_allocated(st.file.last_allocated);
        for p in &settings.peers {
            st.peers.insert(
                p.name.clone(),
                Peer {
                    name: p.name.clone(),
                    node_ip: p.node_ip,
                    pod_cidr: p.pod_cidr,
                    vtep_mac: p
                        .vtep_mac
                        .unwrap_or_else(|| sluice_dataplane::table::default_vtep_mac(p.node_ip)),
                    mode: settings.mode,
                    more_cidrs: Vec::new(),
                    source: "config",
                },
            );
        }
        let agent = Arc::new(Agent {
            settings,
            uplink,
            tables,
            runtime,
            backend,
            backend_reason,
            host_mac,
            started: Instant::now(),
            state: Mutex::new(st),
            datastore: std::sync::OnceLock::new(),
        });
        {
            let mut st = agent.lock();
            tracing::info!(state = %outcome, records = st.file.endpoints.len(), "state loaded");
            let records = st.file.endpoints.clone();
            for rec in records {
                agent.restore(&mut st, rec);
            }
            if rebuilding {
                // The rebuilt state replaces the damaged files before any ADD is served.
                st.file.endpoints = st.eps.values().map(|e| e.rec.clone()).collect();
                let file = st.file.clone();
                let generation = st.store.save(&file)?;
                tracing::info!(
                    generation,
                    records = file.endpoints.len(),
                    "recover: state saved"
                );
            }
            agent.sync_peers(&mut st);
            agent.refresh_neighbours(&mut st);
            agent.publish(&mut st);
        }
        Ok(agent)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restore(&self, st: &mut State, rec: EndpointRecord) {
        if let Err(e) = st.ipam.restore(&rec.key, rec.ip) {
            tracing::error!(container = %rec.key.container_id, ip = %rec.ip, error = %e, "stored attachment conflicts; skipped");
            return;
        }
        let mac = rec.mac.parse().unwrap_or_else(|_| pod::pod_mac(rec.ip));
        let port = match pod::reattach(&rec.netns, &rec.ifname) {
            Ok(tap) => {
                let id = alloc_port(st);
                match self.runtime.add_port(id, Box::new(tap)) {
                    Ok(()) => Some(id),
                    Err(e) => {
                        st.free_ports.insert(id.0);
                        tracing::error!(container = %rec.key.container_id, error = %e, "re-attach failed");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(container = %rec.key.container_id, netns = %rec.netns, error = %e,
                    "pod interface not found; address kept until DEL or GC");
                None
            }
        };
        tracing::info!(container = %rec.key.container_id, ip = %rec.ip, attached = port.is_some(), "attachment restored");
        st.eps.insert(rec.key.clone(), Ep { rec, mac, port });
    }

    /// Builds and publishes the tables from the state.
    fn publish(&self, st: &mut State) {
        let s = &self.settings;
        let mut node = NodeParams::new(s.mode, s.node_ip, self.uplink.mac, self.uplink.mtu);
        node.pod_mtu = s.pod_mtu;
        node.vtep_mac = s.vtep_mac;
        node.vni = s.vni;
        node.vxlan_port = s.vxlan_port;
        node.host_mac = self.host_mac;
        let mut routes = Vec::new();
        if self.host_mac.is_some() {
            routes.push((
                Prefix::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"),
                NextHop::Host,
            ));
        }
        // Unassigned parts of the cluster range go nowhere (the host routes the
        // whole range to us: sending them back would loop).
        routes.push((s.cluster_cidr, NextHop::Drop));
        routes.push((s.pod_cidr, NextHop::Local));
        for b in st.ipam.blocks() {
            if *b != s.pod_cidr {
                routes.push((*b, NextHop::Local));
            }
        }
        let mut tunnels = Vec::new();
        for p in st.peers.values() {
            let id = TunnelId(tunnels.len() as u32);
            let nh = st.neigh.get(&p.node_ip).copied();
            let (t, hop) = match p.mode {
                Mode::Vxlan => (
                    Tunnel::vxlan(&node, p.node_ip, p.vtep_mac, nh),
                    NextHop::Vxlan(id),
                ),
                Mode::Ipip => (Tunnel::ipip(&node, p.node_ip, nh), NextHop::Ipip(id)),
                Mode::Native => (Tunnel::native(&node, p.node_ip, nh), NextHop::Native(id)),
            };
            node.accept_vxlan |= p.mode == Mode::Vxlan;
            node.accept_ipip |= p.mode == Mode::Ipip;
            tunnels.push(t);
            routes.push((p.pod_cidr, hop));
            routes.extend(p.more_cidrs.iter().map(|c| (*c, hop)));
        }
        let eps: Vec<Endpoint> = st
            .eps
            .values()
            .filter_map(|e| {
                Some(Endpoint {
                    ip: e.rec.ip,
                    mac: e.mac,
                    port: e.port?,
                    owner: Owner {
                        namespace: e.rec.pod_namespace.as_deref().unwrap_or("").into(),
                        name: e.rec.pod_name.as_deref().unwrap_or("").into(),
                        container_id: e.rec.key.container_id.as_str().into(),
                    },
                })
            })
            .collect();
        let endpoints = match EndpointTable::new(eps) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "endpoint table rejected; keeping the previous one");
                return;
            }
        };
        let sources: Vec<Ipv4Addr> = st.peers.values().map(|p| p.node_ip).collect();
        let local = st.eps.values().filter_map(|e| {
            let r = &e.rec;
            Some((
                policy::PodKey::new(r.pod_namespace.as_deref()?, r.pod_name.as_deref()?),
                r.ip,
            ))
        });
        let local: Vec<(policy::PodKey, Ipv4Addr)> = local.collect();
        st.policy.set_local_endpoints(local);
        let compiled = st.policy.build();
        let t = self.tables.update(|cur| Tables {
            node: Arc::new(node),
            endpoints: Arc::new(endpoints),
            routes: Arc::new(RouteTable::new(routes)),
            tunnels: Arc::new(TunnelTable::new(tunnels, sources)),
            policy: compiled,
            ..cur.clone()
        });
        tracing::debug!(
            generation = t.generation,
            routes = t.routes.len(),
            endpoints = t.endpoints.len(),
            "tables published"
        );
    }

    /// Looks up next-hop MACs of every peer; true if any changed.
    fn refresh_neighbours(&self, st: &mut State) -> bool {
        let mut changed = false;
        let ips: Vec<Ipv4Addr> = st.peers.values().map(|p| p.node_ip).collect();
        for ip in ips {
            let mac = net::next_hop(&self.uplink, ip).and_then(|hop| {
                let m = net::neighbour(&self.uplink.name, hop);
                if m.is_none() {
                    net::trigger_resolution(hop);
                }
                m
            });
            let old = st.neigh.get(&ip).copied();
            if old != mac {
                changed = true;
                match mac {
                    Some(m) => {
                        tracing::info!(peer = %ip, mac = %m, "next hop resolved");
                        st.neigh.insert(ip, m);
                    }
                    None => {
                        st.neigh.remove(&ip);
                    }
                }
            }
        }
        changed
    }

    /// Periodic work of the control loop.
    pub fn tick(&self) {
        let mut st = self.lock();
        if self.refresh_neighbours(&mut st) {
            self.publish(&mut st);
        }
    }

    fn save(&self, st: &mut State) -> Result<(), ApiError> {
        st.file.endpoints = st.eps.values().map(|e| e.rec.clone()).collect();
        st.file.last_allocated = st.ipam.last_allocated();
        let file = st.file.clone();
        st.store
            .save(&file)
            .map(|_| ())
            .map_err(|e| ApiError::new(code::IO_FAILURE, format!("saving node state: {e}")))
    }

    /// Serves one API request.
    pub fn handle(&self, req: Request) -> ApiResult {
        match req {
            Request::CniAdd(a) => self.timed("add", || self.cni_add(a)),
            Request::CniDel(d) => self.timed("del", || self.cni_del(d)),
            Request::CniCheck(a) => self.timed("check", || self.cni_check(a)),
            Request::CniStatus => Ok(Answer::Ready {
                ready: true,
                reason: None,
            }),
            Request::CniGc { valid_attachments } => {
                self.timed("gc", || self.cni_gc(valid_attachments))
            }
            Request::Status => Ok(Answer::Json(self.status())),
            Request::Endpoints => Ok(Answer::Json(self.endpoints_view())),
            Request::Routes => Ok(Answer::Json(self.routes_view())),
            Request::Nodes => Ok(Answer::Json(self.nodes_view())),
            Request::NodeRemove { name } => self.node_remove(&name),
            Request::Stats => Ok(Answer::Json(self.stats_view())),
            Request::Apply { documents } => self.apply(&documents, true),
            Request::Delete { documents } => self.apply(&documents, false),
            Request::PolicyExplain {
                from,
                to,
                port,
                protocol,
            } => self.explain(&from, &to, port, &protocol),
            Request::Monitor { count, timeout_ms } => self.monitor(count, timeout_ms),
            Request::Trace {
                count,
                filter,
                port,
                timeout_ms,
            } => self.trace(count, &filter, port.as_deref(), timeout_ms),
            Request::Capture {
                port,
                count,
                timeout_ms,
            } => self.capture(&port, count, timeout_ms),
        }
    }

    fn timed(&self, op: &'static str, f: impl FnOnce() -> ApiResult) -> ApiResult {
        let t = Instant::now();
        let r = f();
        super::metrics::observe_cni(op, t.elapsed().as_secs_f64());
        let mut st = self.lock();
        *st.cni_ops.entry(op).or_default() += 1;
        if let Err(e) = &r {
            st.last_error = Some(format!("CNI {op}: {}", e.msg));
        }
        drop(st);
        tracing::debug!(
            op,
            elapsed_us = t.elapsed().as_micros() as u64,
            ok = r.is_ok(),
            "cni"
        );
        r
    }

    /// CNI ADD. The slow part (creating and configuring the interface) runs
    /// without the state lock, so parallel ADDs overlap: the key and address
    /// are reserved first, under the lock, and committed after.
    fn cni_add(&self, a: CniAttach) -> ApiResult {
        let key = AttachmentKey {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        };
        let pod_mtu = u32::from(self.settings.pod_mtu);
        let mtu = a.mtu.unwrap_or(pod_mtu);
        self.ensure_free_address()?;
        let ip = {
            let mut st = self.lock();
            if let Some(e) = st.eps.get(&key) {
                return Err(ApiError::new(
                    code::ALREADY_ATTACHED,
                    format!(
                        "container {} interface {} is already attached with {}: expected DEL before another ADD",
                        key.container_id, key.ifname, e.rec.ip
                    ),
                ));
            }
            if st.pending.contains(&key) {
                return Err(ApiError::new(
                    code::ALREADY_ATTACHED,
                    format!(
                        "container {} interface {} is being attached by another ADD",
                        key.container_id, key.ifname
                    ),
                ));
            }
            if !(576..=pod_mtu).contains(&mtu) {
                return Err(ApiError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "mtu {mtu} is not usable on this node: expected 576..={pod_mtu} (uplink MTU minus the {} overhead)",
                        self.settings.mode
                    ),
                ));
            }
            let ip = st.ipam.allocate(&key).map_err(|e| match e {
                IpamError::Exhausted { .. } => ApiError::new(code::POOL_EXHAUSTED, e.to_string()),
                other => ApiError::new(code::INTERNAL, other.to_string()),
            })?;
            st.pending.insert(key.clone());
            ip
        };
        let abort = |st: &mut State| {
            st.pending.remove(&key);
            st.ipam.release(&key);
        };
        let label = super::recover::TapLabel {
            node: self.settings.node_name.clone(),
            key: key.clone(),
            ip,
            netns: a.netns.clone(),
        };
        let wired = match pod::wire(
            &a.netns,
            &a.ifname,
            ip,
            mtu,
            self.settings.tap_queue_len,
            &label.encode(),
        ) {
            Ok(w) => w,
            Err(e) => {
                abort(&mut self.lock());
                let c = match &e {
                    pod::PodNetError::Netns { .. } => code::NETNS_UNUSABLE,
                    pod::PodNetError::IfnameTaken { .. } => code::ALREADY_ATTACHED,
                    _ => code::INTERFACE_FAILED,
                };
                return Err(ApiError::new(c, e.to_string()));
            }
        };
        let port = alloc_port(&mut self.lock());
        // Without the lock too: add_port waits for the worker to take the
        // port, and other ADDs need not wait behind that.
        if let Err(e) = self.runtime.add_port(port, Box::new(wired.tap)) {
            // The TAP went with the failed command (a worker that did not
            // take it in time drops it later): delete the device through its
            // name in the pod, then give back the key, address and port id.
            if let Err(e) = pod::delete(&a.netns, &a.ifname) {
                tracing::warn!(container = %key.container_id, error = %e, "pod interface left behind");
            }
            let mut st = self.lock();
            st.free_ports.insert(port.0);
            abort(&mut st);
            drop(st);
            return Err(ApiError::new(
                code::INTERNAL,
                format!("attaching port: {e}"),
            ));
        }
        let mut st = self.lock();
        st.pending.remove(&key);
        let rec = EndpointRecord {
            key: key.clone(),
            netns: a.netns.clone(),
            ifname: a.ifname.clone(),
            ip,
            mac: wired.mac.to_string(),
            tap: a.ifname.clone(),
            pod_namespace: a.pod.namespace.clone(),
            pod_name: a.pod.name.clone(),
            pod_uid: a.pod.uid.clone(),
            created_unix: now_unix(),
        };
        st.eps.insert(
            key.clone(),
            Ep {
                rec,
                mac: wired.mac,
                port: Some(port),
            },
        );
        self.publish(&mut st);
        if let Err(e) = self.save(&mut st) {
            let gone = self.remove(&mut st, &key);
            self.publish(&mut st);
            drop(st);
            gone.into_iter().for_each(Removed::destroy);
            return Err(e);
        }
        drop(st);
        tracing::info!(container = %key.container_id, ifname = %key.ifname, %ip,
            pod = %format!("{}/{}", a.pod.namespace.as_deref().unwrap_or("-"), a.pod.name.as_deref().unwrap_or("-")),
            "pod attached");
        if let (Some(ds), Some(ns), Some(name)) = (
            self.datastore.get(),
            a.pod.namespace.as_deref(),
            a.pod.name.as_deref(),
        ) {
            ds.endpoint_up(ns, name, ip);
        }
        Ok(Answer::Attached(attachment(
            &a.ifname, wired.mac, mtu, &a.netns, ip,
        )))
    }

    /// Drops an attachment from the state and the dataplane (not saved). The
    /// returned handle deletes its interface; call it after releasing the lock.
    fn remove(&self, st: &mut State, key: &AttachmentKey) -> Option<Removed> {
        let ep = st.eps.remove(key)?;
        if let (Some(ds), Some(ns), Some(name)) = (
            self.datastore.get(),
            ep.rec.pod_namespace.as_deref(),
            ep.rec.pod_name.as_deref(),
        ) {
            ds.endpoint_down(ns, name);
        }
        let port = ep.port.and_then(|port| {
            self.publish(st);
            st.free_ports.insert(port.0);
            self.runtime.remove_port(port)
        });
        st.ipam.release(key);
        Some(Removed { ep, port })
    }

    fn cni_del(&self, d: CniDetach) -> ApiResult {
        let key = AttachmentKey {
            container_id: d.container_id,
            ifname: d.ifname,
        };
        let mut st = self.lock();
        let Some(gone) = self.remove(&mut st, &key) else {
            let pending = st.pending.contains(&key);
            drop(st);
            // No record: an ADD interrupted by a crash may have left its
            // interface in the pod. Not while that ADD is still running.
            if let (Some(netns), false) = (d.netns.as_deref(), pending) {
                if pod::remove_orphan(netns, &key.ifname) {
                    tracing::info!(container = %key.container_id, ifname = %key.ifname, "orphaned interface removed");
                }
            }
            return Ok(Answer::Done);
        };
        self.publish(&mut st);
        let saved = self.save(&mut st);
        drop(st);
        let ip = gone.ep.rec.ip;
        gone.destroy();
        saved?;
        tracing::info!(container = %key.container_id, ifname = %key.ifname, %ip, "pod detached");
        Ok(Answer::Done)
    }

    fn cni_check(&self, a: CniAttach) -> ApiResult {
        let key = AttachmentKey {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        };
        let st = self.lock();
        let Some(ep) = st.eps.get(&key) else {
            return Err(ApiError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {} interface {} is not attached",
                    key.container_id, key.ifname
                ),
            ));
        };
        if ep.rec.netns != a.netns {
            return Err(ApiError::new(
                code::CHECK_FAILED,
                format!("attachment is in {}, not {}", ep.rec.netns, a.netns),
            ));
        }
        if ep.port.is_none() {
            return Err(ApiError::new(
                code::CHECK_FAILED,
                "the pod interface is gone",
            ));
        }
        pod::check(&ep.rec.netns, &ep.rec.ifname, ep.rec.ip, ep.mac)
            .map_err(|m| ApiError::new(code::CHECK_FAILED, m))?;
        let mtu = a.mtu.unwrap_or(u32::from(self.settings.pod_mtu));
        Ok(Answer::Attached(attachment(
            &ep.rec.ifname,
            ep.mac,
            mtu,
            &ep.rec.netns,
            ep.rec.ip,
        )))
    }

    fn cni_gc(&self, valid: Vec<AttachmentKey>) -> ApiResult {
        let valid: BTreeSet<AttachmentKey> = valid.into_iter().collect();
        let mut st = self.lock();
        let stale: Vec<AttachmentKey> = st
            .eps
            .keys()
            .filter(|k| !valid.contains(*k))
            .cloned()
            .collect();
        let mut gone = Vec::new();
        for k in &stale {
            gone.extend(self.remove(&mut st, k));
            tracing::info!(container = %k.container_id, ifname = %k.ifname, "stale attachment collected");
        }
        let saved = if stale.is_empty() {
            Ok(())
        } else {
            self.publish(&mut st);
            self.save(&mut st)
        };
        drop(st);
        gone.into_iter().for_each(Removed::destroy);
        saved.map(|()| Answer::Done)
    }

    /// Applies or deletes Kubernetes objects: all documents are checked
    /// before any takes effect, so a bad document changes nothing.
    fn apply(&self, docs: &str, apply: bool) -> ApiResult {
        let objs = k8s::parse_documents(docs)
            .map_err(|e| ApiError::new(code::INVALID_DOCUMENT, e.to_string()))?;
        for o in &objs {
            if let (true, Object::Node(n)) = (apply, o) {
                NodeInfo::from_node(n)
                    .map_err(|e| ApiError::new(code::INVALID_DOCUMENT, e.to_string()))?;
            }
        }
        let mut st = self.lock();
        let mut report = Vec::new();
        for o in objs {
            let key = o.key();
            if let Err(e) = feed_object(&mut st, &o, apply) {
                tracing::warn!(object = %key, error = %e, "not compiled");
            }
            if let Some(ds) = self.datastore.get() {
                ds.object(&key, apply.then(|| object_json(&o)).flatten());
            }
            let what = if apply {
                match st.objects.apply(o) {
                    Change::Created => "created",
                    Change::Updated => "updated",
                    Change::Unchanged => "unchanged",
                }
            } else if st.objects.delete(&key) {
                "deleted"
            } else {
                "not found"
            };
            tracing::info!(object = %key, what, "object");
            report.push(format!("{key} {what}"));
        }
        self.sync_peers(&mut st);
        st.file.applied_objects = st.objects.iter().filter_map(object_json).collect();
        self.refresh_neighbours(&mut st);
        self.publish(&mut st);
        self.save(&mut st)?;
        Ok(Answer::Json(json!(report)))
    }

    fn monitor(&self, count: u32, timeout_ms: u32) -> ApiResult {
        if count == 0 || count > Self::MAX_CAPTURE {
            return Err(ApiError::new(
                code::INVALID_REQUEST,
                format!("count {count}: expected 1..={}", Self::MAX_CAPTURE),
            ));
        }
        let rx = self.runtime.monitor();
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(timeout_ms.min(Self::MAX_CAPTURE_MS)));
        let mut raw = Vec::new();
        while raw.len() < count as usize {
            match rx.recv_deadline(deadline) {
                Ok(e) => raw.push(e),
                Err(_) => break,
            }
        }
        drop(rx);
        let st = self.lock();
        let pod_of = |ip: u32| {
            st.eps
                .values()
                .find(|e| u32::from(e.rec.ip) == ip)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e.rec.pod_namespace.as_deref().unwrap_or("-"),
                        e.rec.pod_name.as_deref().unwrap_or("-")
                    )
                })
        };
        let events: Vec<serde_json::Value> = raw
            .iter()
            .map(|e| {
                let d = &e.drop;
                let f = d.flow;
                let (direction, pod) = match d.reason {
                    DropReason::PolicyDeniedEgress => ("egress", pod_of(f.src)),
                    DropReason::PolicyDeniedIngress => ("ingress", pod_of(f.dst)),
                    _ => ("-", pod_of(f.src).or_else(|| pod_of(f.dst))),
                };
                // For policy drops: the policies selecting the isolated side.
                let policies: Vec<String> = match (
                    direction,
                    sluice_dataplane::policy::Protocol::from_number(f.proto),
                ) {
                    ("egress" | "ingress", Some(proto)) => {
                        let x = st.policy.explain(
                            &policy::Target::Ip(f.src_addr()),
                            &policy::Target::Ip(f.dst_addr()),
                            f.dport,
                            proto,
                        );
                        let side = if direction == "egress" {
                            &x.egress
                        } else {
                            &x.ingress
                        };
                        side.policies.iter().map(|p| p.to_string()).collect()
                    }
                    _ => Vec::new(),
                };
                json!({
                    "unix_ns": e.unix_ns,
                    "pod": pod,
                    "direction": direction,
                    "flow": f.to_string(),
                    "verdict": "drop",
                    "reason": d.reason.name(),
                    "policies": policies,
                    "port": d.in_port.to_string(),
                })
            })
            .collect();
        Ok(Answer::Json(json!({ "events": events })))
    }

    /// `sluicectl trace`: arms a trace on every worker, waits for `count`
    /// packets or the timeout, and names ports and policy rules.
    fn trace(&self, count: u32, filter: &str, port: Option<&str>, timeout_ms: u32) -> ApiResult {
        use sluice_dataplane::trace::{Filter, MAX_TRACE};
        if count == 0 || count > MAX_TRACE {
            return Err(ApiError::new(
                code::INVALID_REQUEST,
                format!("count {count}: expected 1..={MAX_TRACE}"),
            ));
        }
        let mut filter = Filter::parse(filter)
            .map_err(|e| ApiError::new(code::INVALID_REQUEST, e.to_string()))?;
        if let Some(name) = port {
            filter = filter.on_port(self.port_by_name(name)?);
        }
        let timeout =
            std::time::Duration::from_millis(u64::from(timeout_ms.min(Self::MAX_CAPTURE_MS)));
        let rx = self.runtime.trace(filter, count, timeout);
        let deadline = Instant::now() + timeout;
        let mut raw = Vec::new();
        while raw.len() < count as usize {
            match rx.recv_deadline(deadline) {
                Ok(r) => raw.push(r),
                Err(_) => break,
            }
        }
        // Dropping the receiver disarms the workers at their next traced packet.
        drop(rx);
        let st = self.lock();
        let port_name = |id: PortId| -> String {
            match id {
                PortId::UPLINK => "uplink".to_owned(),
                PortId::HOST => "host".to_owned(),
                _ => st.eps.values().find(|e| e.port == Some(id)).map_or_else(
                    || id.to_string(),
                    |e| {
                        format!(
                            "{}/{}",
                            e.rec.pod_namespace.as_deref().unwrap_or("-"),
                            e.rec.pod_name.as_deref().unwrap_or("-")
                        )
                    },
                ),
            }
        };
        let packets: Vec<serde_json::Value> = raw
            .iter()
            .map(|r| {
                let p = &r.packet;
                let steps: Vec<serde_json::Value> = p
                    .steps
                    .iter()
                    .map(|s| {
                        let mut detail = s.detail.clone();
                        let egress = s.stage == "policy-egress";
                        if egress || s.stage == "policy-ingress" {
                            if let Some(why) = p.flow.and_then(|f| policy_rule(&st, &f, egress)) {
                                detail = format!("{detail}: {why}");
                            }
                        }
                        json!({"stage": s.stage, "next": s.next, "detail": detail})
                    })
                    .collect();
                json!({
                    "unix_ns": r.unix_ns,
                    "worker": r.worker,
                    "in_port": port_name(p.in_port),
                    "len": p.len,
                    "summary": p.summary,
                    "flow": p.flow.map(|f| f.to_string()),
                    "steps": steps,
                    "out_port": p.out_port.map(&port_name),
                })
            })
            .collect();
        Ok(Answer::Json(json!({ "packets": packets })))
    }

    /// A port by the name operators use: `uplink`, `host` or `NAMESPACE/POD`.
    fn port_by_name(&self, port: &str) -> Result<PortId, ApiError> {
        match port {
            "uplink" => Ok(PortId::UPLINK),
            "host" => Ok(PortId::HOST),
            pod => {
                let (ns, name) = pod.split_once('/').ok_or_else(|| {
                    ApiError::new(
                        code::INVALID_REQUEST,
                        format!("port {pod:?}: expected uplink, host or NAMESPACE/POD"),
                    )
                })?;
                let st = self.lock();
                st.eps
                    .values()
                    .find(|e| {
                        e.rec.pod_namespace.as_deref() == Some(ns)
                            && e.rec.pod_name.as_deref() == Some(name)
                    })
                    .and_then(|e| e.port)
                    .ok_or_else(|| {
                        ApiError::new(
                            code::NOT_FOUND,
                            format!("no attached pod {pod} on this node"),
                        )
                    })
            }
        }
    }

    /// The most frames one capture returns, and the longest it waits.
    const MAX_CAPTURE: u32 = 10_000;
    const MAX_CAPTURE_MS: u32 = 60_000;

    fn capture(&self, port: &str, count: u32, timeout_ms: u32) -> ApiResult {
        let bad = |m: String| ApiError::new(code::INVALID_REQUEST, m);
        if count == 0 || count > Self::MAX_CAPTURE {
            return Err(bad(format!(
                "count {count}: expected 1..={}",
                Self::MAX_CAPTURE
            )));
        }
        let id = self.port_by_name(port)?;
        let rx = self.runtime.capture(id, count as usize).ok_or_else(|| {
            ApiError::new(code::NOT_FOUND, format!("port {port} is not attached"))
        })?;
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(timeout_ms.min(Self::MAX_CAPTURE_MS)));
        let mut frames = Vec::new();
        while frames.len() < count as usize {
            match rx.recv_deadline(deadline) {
                Ok(c) => {
                    let hex: String = c.frame.iter().map(|b| format!("{b:02x}")).collect();
                    frames.push(json!({"unix_ns": c.unix_ns, "rx": c.rx, "hex": hex}));
                }
                Err(_) => break,
            }
        }
        // Dropping the receiver ends the capture in the worker.
        Ok(Answer::Json(json!({"port": port, "frames": frames})))
    }

    fn explain(&self, from: &str, to: &str, port: u16, protocol: &str) -> ApiResult {
        let bad = |what: &str, v: &str, e: String| {
            ApiError::new(code::INVALID_REQUEST, format!("{what} {v:?}: {e}"))
        };
        let from_t: policy::Target = from
            .parse()
            .map_err(|e: policy::PolicyError| bad("from", from, e.to_string()))?;
        let to_t: policy::Target = to
            .parse()
            .map_err(|e: policy::PolicyError| bad("to", to, e.to_string()))?;
        let proto: sluice_dataplane::policy::Protocol = protocol
            .to_ascii_uppercase()
            .parse()
            .map_err(|_| bad("protocol", protocol, "expected TCP, UDP or SCTP".into()))?;
        let st = self.lock();
        let e = st.policy.explain(&from_t, &to_t, port, proto);
        let text = e.to_string();
        let mut v = serde_json::to_value(&e).unwrap_or_default();
        v["text"] = json!(text);
        Ok(Answer::Json(v))
    }

    /// Peers from applied Node objects (other than this node), on top of the
    /// configured ones.
    fn sync_peers(&self, st: &mut State) {
        let s = &self.settings;
        st.peers.retain(|_, p| p.source != "api");
        let nodes: Vec<NodeInfo> = st
            .objects
            .nodes()
            .filter_map(|n| NodeInfo::from_node(n).ok())
            .collect();
        for n in nodes {
            if n.name == s.node_name || n.node_ip == s.node_ip {
                continue;
            }
            if st.peers.get(&n.name).is_some_and(|p| p.source != "api") {
                continue;
            }
            st.peers.insert(
                n.name.clone(),
                Peer {
                    name: n.name.clone(),
                    node_ip: n.node_ip,
                    pod_cidr: n.pod_cidr,
                    vtep_mac: n
                        .vtep_mac
                        .unwrap_or_else(|| sluice_dataplane::table::default_vtep_mac(n.node_ip)),
                    mode: n.mode.unwrap_or(s.mode),
                    more_cidrs: Vec::new(),
                    source: "api",
                },
            );
        }
    }

    /// Adds or replaces a peer (from a Node object) and republishes.
    pub fn upsert_peer(&self, p: Peer) {
        let mut st = self.lock();
        if st.peers.get(&p.name) == Some(&p) {
            return;
        }
        tracing::info!(peer = %p.name, node_ip = %p.node_ip, pod_cidr = %p.pod_cidr, "peer updated");
        st.peers.insert(p.name.clone(), p);
        self.refresh_neighbours(&mut st);
        self.publish(&mut st);
    }

    pub fn remove_peer(&self, name: &str) -> bool {
        let mut st = self.lock();
        let gone = st.peers.remove(name).is_some();
        if gone {
            self.publish(&mut st);
        }
        gone
    }

    fn status(&self) -> serde_json::Value {
        let st = self.lock();
        let s = &self.settings;
        json!({
            "node": s.node_name,
            "mode": s.mode.as_str(),
            "node_ip": s.node_ip.to_string(),
            "pod_cidr": s.pod_cidr.to_string(),
            "cluster_cidr": s.cluster_cidr.to_string(),
            "uplink": s.uplink,
            "uplink_mtu": self.uplink.mtu,
            "pod_mtu": s.pod_mtu,
            "vtep_mac": s.vtep_mac.to_string(),
            "vni": s.vni,
            "vxlan_port": s.vxlan_port,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "workers": self.runtime.workers(),
            "uptime_s": self.started.elapsed().as_secs(),
            "pods": st.eps.len(),
            "pods_attached": st.eps.values().filter(|e| e.port.is_some()).count(),
            "peers": st.peers.len(),
            "pod_blocks": st.ipam.blocks().iter().map(Prefix::to_string).collect::<Vec<_>>(),
            "remote_endpoints": st.remote_eps.len(),
            "datastore": if self.datastore.get().is_some() { "etcd" } else { "file" },
            "addresses_free": st.ipam.free_count(),
            "tables_generation": self.tables.load().generation,
            "last_error": st.last_error,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn endpoints_view(&self) -> serde_json::Value {
        let st = self.lock();
        let v: Vec<_> = st
            .eps
            .values()
            .map(|e| {
                json!({
                    "container_id": e.rec.key.container_id,
                    "ifname": e.rec.ifname,
                    "ip": e.rec.ip.to_string(),
                    "mac": e.rec.mac,
                    "netns": e.rec.netns,
                    "tap": e.rec.tap,
                    "namespace": e.rec.pod_namespace,
                    "pod": e.rec.pod_name,
                    "port": e.port.map(|p| p.0),
                    "attached": e.port.is_some(),
                })
            })
            .collect();
        json!(v)
    }

    fn routes_view(&self) -> serde_json::Value {
        let t = self.tables.load();
        let v: Vec<_> = t
            .routes
            .routes()
            .iter()
            .map(|(p, nh)| {
                let via = nh.tunnel().and_then(|id| t.tunnels.get(id)).map(|tun| {
                    json!({"remote": tun.remote.to_string(), "resolved": tun.is_resolved(),
                           "next_hop_mac": tun.nh_mac.map(|m| m.to_string())})
                });
                json!({"prefix": p.to_string(), "next_hop": nh.to_string(), "via": via})
            })
            .collect();
        json!(v)
    }

    fn nodes_view(&self) -> serde_json::Value {
        let st = self.lock();
        let v: Vec<_> = st
            .peers
            .values()
            .map(|p| {
                json!({"name": p.name, "node_ip": p.node_ip.to_string(), "pod_cidr": p.pod_cidr.to_string(),
                       "vtep_mac": p.vtep_mac.to_string(), "mode": p.mode.as_str(), "source": p.source,
                       "next_hop_mac": st.neigh.get(&p.node_ip).map(|m| m.to_string())})
            })
            .collect();
        json!(v)
    }

    fn stats_view(&self) -> serde_json::Value {
        self.runtime.wake_all();
        let workers = self.runtime.stats();
        let mut total = Counters::default();
        let mut policy_total = sluice_dataplane::policy::PolicyStats::default();
        let mut ports = Vec::new();
        let mut per_worker = Vec::new();
        for w in &workers {
            total.add(&w.counters);
            policy_total.add(&w.policy);
            per_worker.push(json!({
                "worker": w.worker, "busy_polls": w.busy_polls, "idle_polls": w.idle_polls,
                "sleeps": w.sleeps, "yields": w.yields, "nice": w.nice, "rx_packets": w.counters.rx_packets, "drops": w.counters.total_drops(),
                "handoff_out": w.handoff_out, "last_error": w.last_error,
            }));
            for (id, name, s) in &w.ports {
                ports.push(json!({
                    "port": id.to_string(), "name": name, "worker": w.worker,
                    "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes, "tx_packets": s.tx_packets,
                    "tx_bytes": s.tx_bytes, "tx_dropped": s.tx_dropped, "rx_errors": s.rx_errors, "tx_errors": s.tx_errors,
                    "rx_gso": s.offload.rx_gso_superframes, "rx_gso_segments": s.offload.rx_gso_segments,
                    "rx_gso_cut": s.offload.rx_gso_cut,
                    "tx_gro": s.offload.tx_gro_superframes, "tx_gro_segments": s.offload.tx_gro_segments,
                    "rx_dropped": s.offload.rx_dropped, "rx_kernel_drops": s.offload.rx_kernel_drops,
                }));
            }
        }
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .filter(|r| total.drop_count(**r) > 0)
            .map(|r| (r.name().to_owned(), json!(total.drop_count(*r))))
            .collect();
        let counters: serde_json::Map<String, serde_json::Value> = total
            .named()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let policy: serde_json::Map<String, serde_json::Value> = policy_total
            .named()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let cni = self.lock().cni_ops.clone();
        json!({"counters": counters, "drops": drops, "policy": policy, "ports": ports, "workers": per_worker, "cni_ops": cni})
    }
}

fn alloc_port(st: &mut State) -> PortId {
    if let Some(p) = st.free_ports.pop_first() {
        return PortId(p);
    }
    let p = PortId(st.next_port);
    st.next_port += 1;
    p
}

fn attachment(ifname: &str, mac: MacAddr, mtu: u32, netns: &str, ip: Ipv4Addr) -> Attachment {
    Attachment {
        ifname: ifname.to_owned(),
        mac: mac.to_string(),
        mtu,
        sandbox: netns.to_owned(),
        address: format!("{ip}/32"),
        gateway: GATEWAY_IP.to_string(),
        routes: vec![RouteSpec {
            dst: "0.0.0.0/0".into(),
            gw: Some(GATEWAY_IP.to_string()),
        }],
    }
}

/// One object as a JSON document (k8s-openapi writes apiVersion and kind).
fn object_json(o: &Object) -> Option<String> {
    match o {
        Object::Node(x) => serde_json::to_string(x).ok(),
        Object::Namespace(x) => serde_json::to_string(x).ok(),
        Object::Pod(x) => serde_json::to_string(x).ok(),
        Object::NetworkPolicy(x) => serde_json::to_string(x).ok(),
        Object::AdminNetworkPolicy(x) => serde_json::to_string(x).ok(),
    }
}

// Read-only views for the metrics endpoint (super::metrics), gathered on scrape.
impl Agent {
    /// Time since the agent started.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// CNI requests served since start, by operation (`add`, `del`, `check`,
    /// `gc`), failed ones included.
    pub fn cni_op_counts(&self) -> BTreeMap<&'static str, u64> {
        self.lock().cni_ops.clone()
    }

    /// Attachments in the state: (interface attached, waiting for its
    /// namespace to come back).
    pub fn attachment_counts(&self) -> (usize, usize) {
        let st = self.lock();
        let attached = st.eps.values().filter(|e| e.port.is_some()).count();
        (attached, st.eps.len() - attached)
    }

    /// Peer nodes known (configured and from Node objects).
    pub fn peer_count(&self) -> usize {
        self.lock().peers.len()
    }

    /// Pod addresses still free in this node's range.
    pub fn addresses_free(&self) -> u64 {
        self.lock().ipam.free_count()
    }
}

/// Feeds one applied (or deleted) object to the policy compiler.
/// Why the policy stage decided as it did for `flow`: the policies selecting
/// that side and the rule that allowed it (from the compiled model, as
/// `sluicectl policy explain` says it).
fn policy_rule(st: &State, flow: &sluice_dataplane::flow::FlowKey, egress: bool) -> Option<String> {
    let proto = sluice_dataplane::policy::Protocol::from_number(flow.proto)?;
    let x = st.policy.explain(
        &policy::Target::Ip(flow.src_addr()),
        &policy::Target::Ip(flow.dst_addr()),
        flow.dport,
        proto,
    );
    let side = if egress { &x.egress } else { &x.ingress };
    let names: Vec<String> = side.policies.iter().map(|p| p.to_string()).collect();
    Some(match (&side.rule, side.isolated) {
        (_, false) => "not isolated".to_owned(),
        (Some(r), _) => format!("allowed by {r}"),
        (None, true) => format!("isolated by {}, no rule allows it", names.join(", ")),
    })
}

fn feed_policy(
    c: &mut policy::Compiler,
    o: &Object,
    apply: bool,
) -> Result<(), policy::PolicyError> {
    match (o, apply) {
        (Object::Namespace(n), true) => c.upsert_namespace(n),
        (Object::Pod(p), true) => c.upsert_pod(p),
        (Object::NetworkPolicy(np), true) => c.upsert_policy(np),
        (Object::AdminNetworkPolicy(anp), true) => Ok(c.upsert_admin_policy(anp)?),
        (Object::AdminNetworkPolicy(_), false) => {
            c.remove_admin_policy(&o.key().name);
            Ok(())
        }
        (Object::Namespace(_), false) => {
            c.remove_namespace(&o.key().name);
            Ok(())
        }
        (Object::Pod(_), false) => {
            let k = o.key();
            c.remove_pod(&policy::PodKey::new(
                k.namespace.unwrap_or_default(),
                k.name,
            ));
            Ok(())
        }
        (Object::NetworkPolicy(_), false) => {
            let k = o.key();
            c.remove_policy(&policy::PolicyKey::new(
                k.namespace.unwrap_or_default(),
                k.name,
            ));
            Ok(())
        }
        (Object::Node(_), _) => Ok(()),
    }
}

/// Feeds one applied (or deleted) object to the policy compiler, giving Pods
/// the address their endpoint on another node has (etcd datastore).
fn feed_object(st: &mut State, o: &Object, apply: bool) -> Result<(), policy::PolicyError> {
    if let Object::Pod(_) = o {
        let k = o.key();
        let key = policy::PodKey::new(k.namespace.clone().unwrap_or_default(), k.name.clone());
        if let Some(&ip) = st.remote_eps.get(&key) {
            let applied = match (apply, o) {
                (true, Object::Pod(p)) => Some(p.clone()),
                _ => None,
            };
            return st.policy.upsert_pod(&remote_pod(&key, applied, ip));
        }
    }
    feed_policy(&mut st.policy, o, apply)
}

/// A pod on another node as the compiler sees it: the applied object (labels,
/// ports) when there is one, with the endpoint's address.
fn remote_pod(
    key: &policy::PodKey,
    applied: Option<k8s_openapi::api::core::v1::Pod>,
    ip: Ipv4Addr,
) -> k8s_openapi::api::core::v1::Pod {
    let mut p = applied.unwrap_or_default();
    p.metadata.namespace = Some(key.namespace.clone());
    p.metadata.name = Some(key.name.clone());
    let status = p.status.get_or_insert_with(Default::default);
    status.pod_ip = Some(ip.to_string());
    status.pod_ips = None;
    p
}

// The cluster datastore's side of the agent (crate::datastore): its thread
// feeds changes in batches; the agent hands it what to publish.
impl Agent {
    /// Connects the agent to the cluster datastore; false if it already is.
    pub fn set_datastore(&self, link: crate::datastore::Link) -> bool {
        self.datastore.set(link).is_ok()
    }

    /// With a datastore: claims one more block when no address is free. May
    /// wait for etcd; called without the state lock.
    fn ensure_free_address(&self) -> Result<(), ApiError> {
        let Some(ds) = self.datastore.get() else {
            return Ok(());
        };
        if self.lock().ipam.free_count() > 0 {
            return Ok(());
        }
        let block = ds.claim_block().map_err(|e| {
            ApiError::new(
                code::POOL_EXHAUSTED,
                format!("no free address in this node's blocks and no new block: {e}"),
            )
        })?;
        self.add_block(block)
            .map_err(|e| ApiError::new(code::INTERNAL, format!("new block {block}: {e}")))
    }

    /// `sluicectl node remove NAME`: frees a node's blocks in the datastore.
    fn node_remove(&self, name: &str) -> ApiResult {
        let Some(ds) = self.datastore.get() else {
            return Err(ApiError::new(
                code::INVALID_REQUEST,
                format!("node remove {name}: this node uses the file datastore, where peers are static: expected datastore = \"etcd\""),
            ));
        };
        let released = ds
            .remove_node(name)
            .map_err(|e| ApiError::new(code::IO_FAILURE, format!("node remove {name}: {e}")))?;
        let blocks: Vec<String> = released.iter().map(Prefix::to_string).collect();
        tracing::info!(node = %name, blocks = ?blocks, "node removed from the datastore");
        Ok(Answer::Json(
            json!({"node": name, "released_blocks": blocks}),
        ))
    }

    /// Adds a pod block this node holds (claimed in the datastore).
    pub fn add_block(&self, block: Prefix) -> Result<(), IpamError> {
        let mut st = self.lock();
        if st.ipam.blocks().contains(&block) {
            return Ok(());
        }
        st.ipam.add_block(block)?;
        tracing::info!(%block, "pod block added");
        self.publish(&mut st);
        Ok(())
    }

    /// The pod blocks this node allocates from.
    pub fn blocks(&self) -> Vec<Prefix> {
        self.lock().ipam.blocks().to_vec()
    }

    /// Attached pods with a Kubernetes name: (namespace, name, address).
    pub fn named_endpoints(&self) -> Vec<(String, String, Ipv4Addr)> {
        self.lock()
            .eps
            .values()
            .filter_map(|e| {
                let r = &e.rec;
                Some((r.pod_namespace.clone()?, r.pod_name.clone()?, r.ip))
            })
            .collect()
    }

    /// Applies a batch of changes seen in the datastore, then publishes the
    /// tables once.
    pub fn apply_cluster(&self, changes: Vec<crate::datastore::ClusterChange>) {
        use crate::datastore::ClusterChange as C;
        if changes.is_empty() {
            return;
        }
        let mut st = self.lock();
        let mut peers_changed = false;
        let mut objects_changed = false;
        for c in changes {
            match c {
                C::Peer(p) => {
                    if p.name == self.settings.node_name || st.peers.get(&p.name) == Some(&p) {
                        continue;
                    }
                    tracing::info!(peer = %p.name, node_ip = %p.node_ip, pod_cidr = %p.pod_cidr,
                        more = p.more_cidrs.len(), "peer from datastore");
                    st.peers.insert(p.name.clone(), p);
                    peers_changed = true;
                }
                C::PeerGone(name) => {
                    if st.peers.get(&name).is_some_and(|p| p.source == "etcd") {
                        st.peers.remove(&name);
                        tracing::info!(peer = %name, "peer gone from datastore");
                        peers_changed = true;
                    }
                }
                C::Endpoint {
                    namespace,
                    name,
                    ip,
                } => {
                    let key = policy::PodKey::new(namespace.as_str(), name.as_str());
                    let changed = match ip {
                        Some(ip) => st.remote_eps.insert(key.clone(), ip) != Some(ip),
                        None => st.remote_eps.remove(&key).is_some(),
                    };
                    if !changed {
                        continue;
                    }
                    let applied = match st.objects.get(&k8s::ObjectKey::pod(namespace, name)) {
                        Some(Object::Pod(p)) => Some(p.clone()),
                        _ => None,
                    };
                    let r = match (ip, applied) {
                        (Some(ip), applied) => st.policy.upsert_pod(&remote_pod(&key, applied, ip)),
                        (None, Some(p)) => st.policy.upsert_pod(&p),
                        (None, None) => {
                            st.policy.remove_pod(&key);
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        tracing::warn!(pod = %key, error = %e, "remote endpoint not compiled");
                    }
                }
                C::Object(doc) => match k8s::parse_documents(&doc) {
                    Ok(objs) => {
                        for o in objs {
                            let same = st.objects.get(&o.key()) == Some(&o);
                            if same {
                                continue;
                            }
                            if let Err(e) = feed_object(&mut st, &o, true) {
                                tracing::warn!(object = %o.key(), error = %e, "not compiled");
                            }
                            tracing::info!(object = %o.key(), "object from datastore");
                            st.objects.apply(o);
                            objects_changed = true;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "object from datastore skipped"),
                },
                C::ObjectGone(key) => {
                    let Some(o) = st.objects.get(&key).cloned() else {
                        continue;
                    };
                    if let Err(e) = feed_object(&mut st, &o, false) {
                        tracing::warn!(object = %key, error = %e, "not compiled");
                    }
                    tracing::info!(object = %key, "object deleted in datastore");
                    st.objects.delete(&key);
                    objects_changed = true;
                }
            }
        }
        if objects_changed {
            self.sync_peers(&mut st);
            st.file.applied_objects = st.objects.iter().filter_map(object_json).collect();
            if let Err(e) = self.save(&mut st) {
                tracing::warn!(error = %e.msg, "objects from datastore not saved");
            }
        }
        if peers_changed || objects_changed {
            self.refresh_neighbours(&mut st);
        }
        self.publish(&mut st);
    }
}
