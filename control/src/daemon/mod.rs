//! sluiced: the node daemon. [`run`] brings a node up: uplink and host ports,
//! workers, the agent with its restored state, the API socket; then it serves
//! until told to stop, and shuts down leaving pods' interfaces in place.

pub mod agent;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod pod;
pub mod recover;
pub mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_dataplane::buf::PortId;
use sluice_dataplane::policy::{conntrack, enforcer, NetPolicy};
use sluice_dataplane::port::packet::{KernelSinks, PacketSocket, UplinkFilter};
use sluice_dataplane::port::xdp::{XdpConfig, XdpMode, XdpUplink};
use sluice_dataplane::runtime::{BoxPort, Runtime, RuntimeConfig};
use sluice_dataplane::sys::genl;
use sluice_dataplane::table::{Mode, NodeParams, Prefix, TableHandle, Tables};
use sluice_dataplane::wire::MacAddr;

/// Which uplink backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// AF_XDP where the driver binds it zero-copy or the mode is IPIP, else
    /// kernel sockets (in copy mode they carry more, as they move VXLAN and
    /// native superframes whole).
    #[default]
    Auto,
    AfXdp,
    Socket,
}

/// A statically configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Prefix,
    pub vtep_mac: Option<MacAddr>,
}

/// Everything the daemon runs with, resolved (defaults filled from the host).
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub mode: Mode,
    pub uplink: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Prefix,
    pub cluster_cidr: Prefix,
    pub vni: u32,
    pub vxlan_port: u16,
    pub pod_mtu: u16,
    pub vtep_mac: MacAddr,
    pub workers: usize,
    pub backend: Backend,
    /// With AF_XDP in VXLAN mode, superframes go through a send-only packet
    /// socket (`XdpConfig::superframe_socket`).
    pub xdp_superframe_socket: bool,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    /// Where the Prometheus endpoint listens.
    pub metrics_listen: SocketAddr,
    pub host_port: bool,
    pub host_ifname: String,
    /// Connection-tracking entries of the node (one worker's table, or the
    /// table all workers share when there are several).
    pub conntrack_size: usize,
    /// How long a worker polls after its last packet before it sleeps.
    pub busy_poll: Duration,
    /// How long a worker polls past `busy_poll` while no other task wants its
    /// CPU ([`RuntimeConfig::idle_poll`]).
    pub idle_poll: Duration,
    /// Yield the CPU after delivering to a local reader (see
    /// [`RuntimeConfig::yield_on_delivery`]).
    pub yield_on_delivery: bool,
    /// Nice value of the worker threads ([`RuntimeConfig::nice`]).
    pub worker_nice: i32,
    /// `txqueuelen` of the pod TAPs and the host TAP.
    pub tap_queue_len: u32,
    pub peers: Vec<PeerSpec>,
    /// When the state file and its backup are both unusable, set them aside and
    /// rebuild the endpoints from the pod TAPs (`sluiced --recover`, see [`recover`]).
    pub recover: bool,
    /// Further pod blocks this node holds besides `pod_cidr` (etcd datastore).
    pub more_blocks: Vec<Prefix>,
    /// The etcd datastore, when the node uses one (`datastore = "etcd"`).
    pub etcd: Option<crate::datastore::etcd::EtcdSettings>,
}

impl Settings {
    /// The daemon's settings from a resolved configuration. With `datastore = "etcd"` the
    /// node's pod blocks are the ones it claimed before (state directory), else it claims its
    /// first block now: that may wait for etcd.
    pub fn from_resolved(r: &crate::config::Resolved) -> Result<Settings, DaemonError> {
        use crate::config::UplinkBackend;
        let etcd = crate::datastore::etcd::EtcdSettings::from_resolved(r);
        let (pod_cidr, more_blocks) = match &etcd {
            Some(e) => {
                let blocks = crate::datastore::etcd::initial_blocks(e, r.pod_cidr)?;
                let (first, more) = blocks.split_first().ok_or(DaemonError::Config {
                    key: "cluster_cidr",
                    reason: "no pod block could be claimed".into(),
                })?;
                (*first, more.to_vec())
            }
            None => (
                r.pod_cidr.ok_or_else(|| DaemonError::Config {
                    key: "pod_cidr",
                    reason: "required with the file datastore".into(),
                })?,
                Vec::new(),
            ),
        };
        Ok(Settings {
            node_name: r.node_name.clone(),
            mode: r.mode,
            uplink: r.uplink.clone(),
            node_ip: r.node_ip,
            pod_cidr,
            cluster_cidr: r.cluster_cidr,
            vni: r.vni,
            vxlan_port: r.vxlan_port,
            pod_mtu: r.pod_mtu,
            vtep_mac: r.vtep_mac,
            workers: usize::from(r.workers),
            backend: match r.uplink_backend {
                UplinkBackend::Auto => Backend::Auto,
                UplinkBackend::AfXdp => Backend::AfXdp,
                UplinkBackend::Socket => Backend::Socket,
            },
            xdp_superframe_socket: r.xdp_superframe_socket,
            state_dir: r.state_dir.clone(),
            api_socket: r.api_socket.clone(),
            metrics_listen: r.metrics_listen,
            host_port: r.host_port,
            host_ifname: r.host_ifname.clone(),
            conntrack_size: r.conntrack_size as usize,
            busy_poll: r.busy_poll,
            idle_poll: r.idle_poll,
            yield_on_delivery: r.yield_on_delivery,
            worker_nice: r.worker_nice,
            tap_queue_len: r.tap_queue_len,
            peers: r
                .peers
                .iter()
                .map(|p| PeerSpec {
                    name: p.name.clone(),
                    node_ip: p.node_ip,
                    pod_cidr: p.pod_cidr,
                    vtep_mac: Some(p.vtep_mac),
                })
                .collect(),
            recover: false,
            more_blocks,
            etcd,
        })
    }
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration key {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("node state: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("address management: {0}")]
    Ipam(String),
    #[error("uplink backend {backend}: {reason}")]
    Uplink {
        backend: &'static str,
        reason: String,
    },
    #[error("API socket {path}: {source}")]
    Api {
        path: String,
        source: std::io::Error,
    },
    #[error("starting workers: {0}")]
    Runtime(std::io::Error),
    #[error("cluster datastore: {0}")]
    Datastore(#[from] crate::datastore::DatastoreError),
}

/// What keeps the kernel out of the uplink's way while the uplink port lives:
/// sockets that swallow the tunnels' kernel copies, and in native mode the
/// table that drops the pods' (see [`net::NativeBypass`]).
struct KernelGuards {
    _sinks: Option<KernelSinks>,
    _native: Option<net::NativeBypass>,
}

/// Why AF_XDP on `uplink` could only copy, where its driver says it offers no
/// zero-copy (netdev netlink, Linux 6.3); `None` where it offers it or the
/// kernel cannot tell, and binding is the way to find out.
fn driver_without_zero_copy(uplink: &str) -> Option<String> {
    let ifindex = nix::net::if_::if_nametoindex(uplink).ok()?;
    match genl::xdp_features(ifindex) {
        Ok(Some(f)) if f & genl::XDP_ACT_XSK_ZEROCOPY == 0 => Some(format!(
            "AF_XDP would only copy on {uplink} (its driver offers no zero-copy), and sockets carry superframes whole"
        )),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the uplink driver's XDP features");
            None
        }
    }
}

/// Opens the uplink port with the configured backend.
fn open_uplink(s: &Settings) -> Result<(BoxPort, String, String, KernelGuards), DaemonError> {
    let vxlan = (s.mode == Mode::Vxlan).then_some(s.vxlan_port);
    let ipip = s.mode == Mode::Ipip;
    // With etcd the node may claim more blocks later: take the whole pod range.
    let native_prefix = (s.mode == Mode::Native).then_some(if s.etcd.is_some() {
        s.cluster_cidr
    } else {
        s.pod_cidr
    });
    let native: Vec<(Ipv4Addr, u8)> = native_prefix
        .iter()
        .map(|p| (p.addr(), p.prefix_len()))
        .collect();
    // In copy mode every frame is copied into the UMEM and, on receive,
    // arrives cut to the MTU (no GRO in front of XDP), while kernel sockets
    // carry VXLAN and native superframes whole both ways: on a veth uplink
    // they moved 1.6–3.1× more TCP per stream at 8–13% fewer 64-byte packets
    // per second (BENCHMARKS.md). No socket carries an IPIP superframe
    // (virtio-net has no GSO type for it), and there AF_XDP was ahead or
    // level on every figure. So `auto` keeps AF_XDP for drivers that bind it
    // zero-copy and for IPIP; `af_xdp` forces it.
    let sockets_if_copying = s.backend == Backend::Auto && s.mode != Mode::Ipip;
    // The driver's own word first, so that one without zero-copy is not
    // given an XDP program only to find that out.
    let copy_only = sockets_if_copying
        .then(|| driver_without_zero_copy(&s.uplink))
        .flatten();
    let xdp_err = if copy_only.is_some() {
        copy_only
    } else if s.backend != Backend::Socket {
        let mut cfg = XdpConfig::new(s.node_ip);
        cfg.vxlan_port = vxlan;
        cfg.ipip = ipip;
        cfg.native_prefixes = native.clone();
        cfg.superframe_socket = s.xdp_superframe_socket;
        match XdpUplink::open(&s.uplink, &cfg) {
            // A kernel that did not say (before Linux 6.3), or a driver that
            // offers zero-copy and still bound without it.
            Ok(x) if sockets_if_copying && !x.is_zerocopy() => {
                let how = match x.mode() {
                    XdpMode::Skb => "generic XDP",
                    _ => "driver XDP",
                };
                // Dropping the port detaches the program again.
                drop(x);
                Some(format!(
                    "AF_XDP would only copy on {} (bound without zero-copy, {how}), and sockets carry superframes whole",
                    s.uplink
                ))
            }
            Ok(x) => {
                let how = match x.superframe_socket() {
                    Ok(true) => "sent whole through a packet socket".to_owned(),
                    Ok(false) if vxlan.is_some() => "cut into frames (configured)".to_owned(),
                    Ok(false) => "cut into frames".to_owned(),
                    Err(e) => format!("cut into frames (packet socket: {e})"),
                };
                let reason = format!("AF_XDP socket bound; superframes {how}");
                net::NativeBypass::remove_stale();
                let guards = KernelGuards {
                    _sinks: None,
                    _native: None,
                };
                return Ok((Box::new(x), "af_xdp".into(), reason, guards));
            }
            Err(e) if s.backend == Backend::AfXdp => {
                return Err(DaemonError::Uplink {
                    backend: "af_xdp",
                    reason: e.to_string(),
                })
            }
            Err(e) => Some(format!("AF_XDP not available ({e})")),
        }
    } else {
        None
    };
    // Kernel sockets. A Sluice XDP program an earlier run left on the uplink
    // (it crashed, or ran AF_XDP) would only pass frames on; it goes.
    match XdpUplink::detach_stale(&s.uplink) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            programs = n,
            "removed a stale Sluice XDP program from the uplink"
        ),
        Err(e) => tracing::debug!(error = %e, "cannot look for a stale XDP program on the uplink"),
    }
    // Native-mode pod traffic is taken off the uplink too, and
    // the kernel's copy dropped; where that table cannot be made, the node's
    // kernel forwards it to the host port (it routes the pod CIDRs there).
    let mut filter = UplinkFilter::new(s.node_ip);
    filter.vxlan_port = vxlan;
    filter.ipip = ipip;
    let mut native_note = None;
    let native_guard = match native_prefix {
        Some(p) => match net::NativeBypass::install(&s.uplink, &[p]) {
            Ok(g) => {
                filter.native_prefixes = native;
                native_note = Some(format!(
                    "pod traffic taken off the uplink (kernel copy dropped in nftables table ip {})",
                    net::NATIVE_TABLE
                ));
                Some(g)
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod traffic goes through the node's kernel and the host port instead");
                native_note = Some(format!("pod traffic through the host port ({e})"));
                None
            }
        },
        None => {
            net::NativeBypass::remove_stale();
            None
        }
    };
    let sock = PacketSocket::open(&s.uplink, &filter).map_err(|e| DaemonError::Uplink {
        backend: "socket",
        reason: e.to_string(),
    })?;
    let sinks = KernelSinks::open(s.node_ip, vxlan, ipip).map_err(|e| DaemonError::Uplink {
        backend: "socket",
        reason: e.to_string(),
    })?;
    let mut reason = match xdp_err {
        Some(why) => format!("{why}; using kernel sockets"),
        None => "kernel sockets (configured)".into(),
    };
    if let Some(n) = native_note {
        reason = format!("{reason}; {n}");
    }
    let guards = KernelGuards {
        _sinks: Some(sinks),
        _native: native_guard,
    };
    Ok((Box::new(sock), "socket".into(), reason, guards))
}

/// Runs the node until `stop` is set.
pub fn run(s: Settings, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    let uplink = net::uplink_info(&s.uplink)?;
    if s.host_port || s.mode == Mode::Native {
        if let Err(e) = net::enable_forwarding() {
            tracing::warn!(error = %e, "cannot enable IPv4 forwarding: pods will not reach outside the cluster");
        }
    }
    let mut node = NodeParams::new(s.mode, s.node_ip, uplink.mac, uplink.mtu);
    node.pod_mtu = s.pod_mtu;
    let tables = TableHandle::new(Tables::new(node));
    let rt_cfg = RuntimeConfig {
        workers: s.workers,
        busy_poll: s.busy_poll,
        idle_poll: s.idle_poll,
        yield_on_delivery: s.yield_on_delivery,
        nice: Some(s.worker_nice),
        ..RuntimeConfig::default()
    };
    let ct = conntrack::Config {
        capacity: s.conntrack_size,
        ..conntrack::Config::default()
    };
    let policy_cfg = enforcer::Config {
        conntrack: ct,
        ..enforcer::Config::default()
    };
    // With several workers a connection's two directions may be classified
    // on different workers (ports have owners): they share one sharded table.
    let shared_ct = (rt_cfg.workers > 1)
        .then(|| Arc::new(conntrack::SharedTable::new(ct, conntrack::DEFAULT_SHARDS)));
    let runtime = Runtime::start(&rt_cfg, &tables, || match &shared_ct {
        Some(t) => NetPolicy::with_shared(policy_cfg, t.clone()),
        None => NetPolicy::new(policy_cfg),
    })
    .map_err(DaemonError::Runtime)?;
    for w in runtime.setup_warnings() {
        tracing::warn!("{w}; it runs on at the nice it has (worker_nice needs CAP_SYS_NICE)");
    }

    let (up, backend, reason, _guards) = open_uplink(&s)?;
    tracing::info!(backend = %backend, reason = %reason, uplink = %s.uplink, "uplink backend chosen");
    runtime
        .add_port(PortId::UPLINK, up)
        .map_err(DaemonError::Runtime)?;
    let host_mac = if s.host_port {
        let h = net::host_port(
            &s.host_ifname,
            s.pod_mtu,
            s.tap_queue_len,
            s.pod_cidr,
            s.cluster_cidr,
        )?;
        runtime
            .add_port(PortId::HOST, Box::new(h.tap))
            .map_err(DaemonError::Runtime)?;
        Some(h.mac)
    } else {
        None
    };

    let listener = server::bind(&s.api_socket).map_err(|source| DaemonError::Api {
        path: s.api_socket.display().to_string(),
        source,
    })?;
    let api_path = s.api_socket.clone();
    let agent = agent::Agent::new(s, uplink, tables, runtime, backend, reason, host_mac)?;
    let _datastore = match agent.settings.etcd.clone() {
        Some(e) => Some(crate::datastore::etcd::start(e, agent.clone())?),
        None => None,
    };
    let _server = server::Server::start(listener, api_path, agent.clone());
    let _metrics = metrics::serve(agent.settings.metrics_listen, agent.clone()).map_err(|e| {
        DaemonError::Config {
            key: "metrics_listen",
            reason: e.to_string(),
        }
    })?;
    notify::ready();
    tracing::info!(node = %agent.settings.node_name, mode = %agent.settings.mode, "sluiced ready");

    let mut last_beat = agent.runtime.heartbeat();
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if last_tick.elapsed() >= Duration::from_millis(500) {
            agent.tick();
            last_tick = Instant::now();
            // Feed the watchdog only while the workers are making progress.
            let beat = agent.runtime.heartbeat();
            if beat != last_beat {
                notify::watchdog();
            }
            last_beat = beat;
        }
    }
    notify::stopping();
    tracing::info!("sluiced stopping; pod interfaces stay");
    Ok(())
}
