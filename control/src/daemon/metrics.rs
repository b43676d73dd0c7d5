//! sluiced's Prometheus endpoint: `GET /metrics` on `metrics_listen`.
//!
//! Everything is gathered when scraped ([`Snapshot::gather`]): the workers'
//! published stats ([`Runtime::stats`](sluice_dataplane::runtime::Runtime::stats)),
//! the published tables and the agent's state. The fast path gains no atomics
//! for this. The one metric kept between scrapes is the CNI latency histogram,
//! observed once per CNI request by the agent ([`observe_cni`]).
//!
//! The body is the Prometheus text format 0.0.4, encoded by the official
//! client; the `http` submodule serves it.
//!
//! Counters restart from zero when sluiced restarts or, for a pod, when its
//! port is re-attached; Prometheus' `rate()` handles such resets. docs/metrics.md
//! lists every metric.

mod http;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use sluice_dataplane::buf::PortId;
use sluice_dataplane::drop::DropReason;
use sluice_dataplane::runtime::{PortStats, WorkerStats};
use sluice_dataplane::stage::Counters;

use super::agent::Agent;
pub use http::MetricsServer;

/// Every metric name starts with this (`sluice_`).
pub const PREFIX: &str = "sluice";

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The CNI operations the agent times; their series exist from the start.
pub const CNI_OPS: [&str; 4] = ["add", "del", "check", "gc"];

/// Upper bounds (seconds) of the CNI latency buckets: an ADD creates and
/// configures a TAP in the pod (milliseconds), more under load.
const CNI_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the metrics endpoint could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} ({source}); expected a free local address and port")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("metrics endpoint {addr}: {what}: {source}")]
    Io {
        addr: SocketAddr,
        what: &'static str,
        source: io::Error,
    },
    /// Writing into a `String` fails only when the encoder refuses a metric.
    #[error("encoding /metrics: the Prometheus text encoder refused a metric")]
    Encode,
}

type CniLabels = [(&'static str, String); 1];
type CniHistograms = Family<CniLabels, Histogram, fn() -> Histogram>;

fn new_cni_histogram() -> Histogram {
    Histogram::new(CNI_BUCKETS)
}

/// The process-wide CNI latency histogram, by operation.
fn cni_histograms() -> &'static CniHistograms {
    static H: OnceLock<CniHistograms> = OnceLock::new();
    H.get_or_init(|| {
        let f: CniHistograms = Family::new_with_constructor(new_cni_histogram);
        for op in CNI_OPS {
            drop(f.get_or_create(&[("op", op.to_owned())]));
        }
        f
    })
}

/// Records how long one CNI operation (`add`, `del`, `check`, `gc`) took,
/// failures included.
pub fn observe_cni(op: &str, seconds: f64) {
    if seconds.is_finite() && seconds >= 0.0 {
        cni_histograms()
            .get_or_create(&[("op", op.to_owned())])
            .observe(seconds);
    }
}

/// Owner of a pod port, as its labels read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodLabels {
    /// Kubernetes namespace (empty when the runtime did not say).
    pub namespace: String,
    /// Pod name; the container id when the runtime did not say.
    pub pod: String,
}

/// Everything one scrape reports, gathered at once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub node: String,
    pub version: String,
    pub mode: String,
    pub backend: String,
    pub uptime: Duration,
    /// Every worker's published stats.
    pub workers: Vec<WorkerStats>,
    /// Owners of the pod ports in the published endpoint table.
    pub pods: BTreeMap<PortId, PodLabels>,
    pub routes: usize,
    pub endpoints: usize,
    pub tunnels: usize,
    pub generation: u64,
    /// CNI requests served, by operation.
    pub cni_ops: BTreeMap<String, u64>,
    /// Attachments whose interface is attached, and those waiting for it.
    pub attached: usize,
    pub detached: usize,
    pub peers: usize,
    pub addresses_free: u64,
}

impl Snapshot {
    /// Reads the agent, its tables and the workers' stats.
    pub fn gather(agent: &Agent) -> Snapshot {
        // Idle workers refresh their stats before they sleep again.
        agent.runtime.wake_all();
        let tables = agent.tables.load();
        let pods = tables
            .endpoints
            .iter()
            .map(|e| {
                let pod = if e.owner.name.is_empty() {
                    e.owner.container_id.to_string()
                } else {
                    e.owner.name.to_string()
                };
                let labels = PodLabels {
                    namespace: e.owner.namespace.to_string(),
                    pod,
                };
                (e.port, labels)
            })
            .collect();
        let (attached, detached) = agent.attachment_counts();
        Snapshot {
            node: agent.settings.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            mode: agent.settings.mode.as_str().to_owned(),
            backend: agent.backend.clone(),
            uptime: agent.uptime(),
            workers: agent.runtime.stats(),
            pods,
            routes: tables.routes.len(),
            endpoints: tables.endpoints.len(),
            tunnels: tables.tunnels.len(),
            generation: tables.generation,
            cni_ops: agent
                .cni_op_counts()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            attached,
            detached,
            peers: agent.peer_count(),
            addresses_free: agent.addresses_free(),
        }
    }

    /// Per-pod port counters summed by pod (all its interfaces, on any
    /// worker). Ports not in the endpoint table yet are left out.
    fn pod_totals(&self) -> BTreeMap<&PodLabels, PortStats> {
        let mut out: BTreeMap<&PodLabels, PortStats> = BTreeMap::new();
        for w in &self.workers {
            for (id, _, s) in &w.ports {
                let Some(owner) = self.pods.get(id).filter(|_| id.is_pod()) else {
                    continue;
                };
                let t = out.entry(owner).or_default();
                t.rx_packets += s.rx_packets;
                t.rx_bytes += s.rx_bytes;
                t.tx_packets += s.tx_packets;
                t.tx_bytes += s.tx_bytes;
                t.tx_dropped += s.tx_dropped;
                t.rx_errors += s.rx_errors;
                t.tx_errors += s.tx_errors;
                let (o, so) = (&mut t.offload, &s.offload);
                o.rx_gso_superframes += so.rx_gso_superframes;
                o.rx_gso_segments += so.rx_gso_segments;
                o.rx_gso_cut += so.rx_gso_cut;
                o.tx_gro_superframes += so.tx_gro_superframes;
                o.tx_gro_segments += so.tx_gro_segments;
                o.rx_dropped += so.rx_dropped;
                o.rx_kernel_drops += so.rx_kernel_drops;
            }
        }
        out
    }
}

/// The `/metrics` body for a snapshot.
pub fn render(snapshot: Snapshot) -> Result<String, MetricsError> {
    let mut reg = Registry::with_prefix(PREFIX);
    reg.register(
        "cni_operation_duration_seconds",
        "Time sluiced took to serve a CNI request, by operation, failures included",
        cni_histograms().clone(),
    );
    reg.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &reg).map_err(|_| MetricsError::Encode)?;
    Ok(out)
}

/// A pod port counter: its name, its help, and which port counter it reads.
/// The pod port's rx is what the pod sent, so names are turned round to the
/// pod's point of view.
type PortField = (&'static str, &'static str, fn(&PortStats) -> u64);

const POD_COUNTERS: [PortField; 13] = [
    (
        "pod_rx_packets",
        "Packets Sluice delivered to the pod (its interface's tx)",
        |s| s.tx_packets,
    ),
    ("pod_rx_bytes", "Bytes Sluice delivered to the pod", |s| {
        s.tx_bytes
    }),
    (
        "pod_tx_packets",
        "Packets the pod sent, as Sluice read them from its interface",
        |s| s.rx_packets,
    ),
    ("pod_tx_bytes", "Bytes the pod sent", |s| s.rx_bytes),
    (
        "pod_rx_dropped",
        "Packets for the pod that its interface refused (queue full, link down)",
        |s| s.tx_dropped,
    ),
    (
        "pod_rx_errors",
        "Errors writing packets to the pod's interface",
        |s| s.tx_errors,
    ),
    (
        "pod_tx_errors",
        "Errors reading packets from the pod's interface",
        |s| s.rx_errors,
    ),
    (
        "pod_tx_gso_superframes",
        "TCP superframes (TSO) the pod sent",
        |s| s.offload.rx_gso_superframes,
    ),
    (
        "pod_tx_gso_segments",
        "Segments the pod's TCP superframes carry",
        |s| s.offload.rx_gso_segments,
    ),
    (
        "pod_rx_gro_superframes",
        "TCP superframes Sluice delivered to the pod: passed on whole, or joined from a run of segments (GRO)",
        |s| s.offload.tx_gro_superframes,
    ),
    (
        "pod_rx_gro_segments",
        "Segments in the superframes delivered to the pod",
        |s| s.offload.tx_gro_segments,
    ),
    (
        "pod_tx_dropped",
        "Frames from the pod dropped before forwarding: longer than a buffer, a bad offload header, or a malformed superframe",
        |s| s.offload.rx_dropped,
    ),
    (
        "pod_tx_kernel_drops",
        "Frames the pod sent that its interface's queue could not hold: dropped by the kernel before Sluice read them",
        |s| s.offload.rx_kernel_drops,
    ),
];

const PORT_COUNTERS: [PortField; 14] = [
    (
        "port_rx_packets",
        "Packets Sluice received on a node port",
        |s| s.rx_packets,
    ),
    (
        "port_rx_bytes",
        "Bytes Sluice received on a node port",
        |s| s.rx_bytes,
    ),
    (
        "port_tx_packets",
        "Packets Sluice sent on a node port",
        |s| s.tx_packets,
    ),
    ("port_tx_bytes", "Bytes Sluice sent on a node port", |s| {
        s.tx_bytes
    }),
    (
        "port_tx_dropped",
        "Packets a node port refused to send (queue full, link down)",
        |s| s.tx_dropped,
    ),
    ("port_rx_errors", "Errors receiving on a node port", |s| {
        s.rx_errors
    }),
    ("port_tx_errors", "Errors sending on a node port", |s| {
        s.tx_errors
    }),
    (
        "port_rx_gso_superframes",
        "Superframes received on a node port",
        |s| s.offload.rx_gso_superframes,
    ),
    (
        "port_rx_gso_segments",
        "Segments in the superframes received on a node port",
        |s| s.offload.rx_gso_segments,
    ),
    (
        "port_rx_gso_cut",
        "Superframes received on a node port that were cut into frames, not passed on whole",
        |s| s.offload.rx_gso_cut,
    ),
    (
        "port_tx_gro_superframes",
        "Superframes sent on a node port: passed on whole, or joined from a run of segments",
        |s| s.offload.tx_gro_superframes,
    ),
    (
        "port_tx_gro_segments",
        "Segments in the superframes sent on a node port",
        |s| s.offload.tx_gro_segments,
    ),
    (
        "port_rx_dropped",
        "Frames a node port dropped on receive before forwarding (longer than a buffer, bad offload header)",
        |s| s.offload.rx_dropped,
    ),
    (
        "port_rx_kernel_drops",
        "Frames the kernel dropped before a node port could read them (socket queue, AF_XDP ring or TAP queue full)",
        |s| s.offload.rx_kernel_drops,
    ),
];

type WorkerField = (&'static str, &'static str, fn(&WorkerStats) -> u64);

const WORKER_COUNTERS: [WorkerField; 8] = [
    (
        "worker_busy_polls",
        "Worker loop iterations that found packets",
        |w| w.busy_polls,
    ),
    (
        "worker_idle_polls",
        "Worker loop iterations that found nothing",
        |w| w.idle_polls,
    ),
    (
        "worker_sleeps",
        "Times a worker slept in epoll after spinning idle",
        |w| w.sleeps,
    ),
    (
        "worker_yields",
        "Times a worker gave up its CPU after delivering to a pod or the node",
        |w| w.yields,
    ),
    (
        "worker_rx_packets",
        "Packets a worker took into its pipeline",
        |w| w.counters.rx_packets,
    ),
    (
        "worker_drops",
        "Packets a worker dropped, all reasons",
        |w| w.counters.total_drops(),
    ),
    (
        "worker_handoff_packets",
        "Packets a worker handed to the worker that owns their output port",
        |w| w.handoff_out,
    ),
    (
        "worker_pool_grown_buffers",
        "Buffers a worker allocated because its pool ran dry",
        |w| w.pool_grown,
    ),
];

/// Help for a pipeline counter of [`Counters::named`]; `None` for one this
/// module does not know yet (it is still exported, with a generic help).
fn pipeline_help(name: &str) -> Option<&'static str> {
    Some(match name {
        "rx_packets" => "Packets taken into the pipeline from every port",
        "batches" => "Batches the pipeline ran",
        "arp_replies" => "ARP requests Sluice answered on pod and host ports",
        "icmp_errors" => "ICMP errors Sluice sent (time exceeded, fragmentation needed)",
        "vxlan_decap" => "VXLAN packets decapsulated",
        "ipip_decap" => "IP-in-IP packets decapsulated",
        "native_in" => "Routed (native mode) packets taken in from other nodes",
        "vxlan_encap" => "Packets encapsulated in VXLAN towards other nodes",
        "ipip_encap" => "Packets encapsulated in IP-in-IP towards other nodes",
        "native_out" => "Packets routed (native mode) towards other nodes",
        "local_delivered" => "Packets delivered to pods on this node",
        "to_host" => "Packets sent to the node's kernel through the host port",
        _ => return None,
    })
}

/// Help text as the registry writes it for registered metrics: one sentence.
fn sentence(help: &str) -> String {
    format!("{help}.")
}

fn gauge<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: N,
) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, &sentence(help), None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, &sentence(help), None, c.metric_type())?)
}

/// A labelled counter or gauge family; `rows` are (label values in the order
/// of `keys`, value).
fn family<const N: usize>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    keys: [&'static str; N],
    rows: impl IntoIterator<Item = ([String; N], u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, &sentence(help), None, kind)?;
    for (values, v) in rows {
        let labels: Vec<(&str, String)> = keys.into_iter().zip(values).collect();
        let sample = m.encode_family(&labels)?;
        if kind == MetricType::Counter {
            ConstCounter::new(v).encode(sample)?;
        } else {
            ConstGauge::new(v).encode(sample)?;
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let e = &mut enc;
        family(
            e,
            "build_info",
            "Always 1; the labels say which sluiced runs and how",
            MetricType::Gauge,
            ["version", "mode", "backend", "node"],
            [(
                [
                    self.version.clone(),
                    self.mode.clone(),
                    self.backend.clone(),
                    self.node.clone(),
                ],
                1u64,
            )],
        )?;
        gauge(
            e,
            "uptime_seconds",
            "Seconds since sluiced started",
            self.uptime.as_secs_f64(),
        )?;

        // Pods: per pod, from its port's counters seen from the pod's side.
        let pods = self.pod_totals();
        for (name, help, get) in POD_COUNTERS {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                ["namespace", "pod"],
                pods.iter()
                    .map(|(l, s)| ([l.namespace.clone(), l.pod.clone()], get(s))),
            )?;
        }

        // Node ports: the uplink and the host port, from Sluice's side.
        let node_ports: Vec<(String, String, &PortStats)> = self
            .workers
            .iter()
            .flat_map(|w| w.ports.iter())
            .filter(|(id, _, _)| !id.is_pod())
            .map(|(id, name, s)| (id.to_string(), name.clone(), s))
            .collect();
        for (name, help, get) in PORT_COUNTERS {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                ["port", "name"],
                node_ports
                    .iter()
                    .map(|(port, dev, s)| ([port.clone(), dev.clone()], get(s))),
            )?;
        }

        // Workers' loops.
        for (name, help, get) in WORKER_COUNTERS {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                ["worker"],
                self.workers
                    .iter()
                    .map(|w| ([w.worker.to_string()], get(w))),
            )?;
        }

        // Pipeline, summed over workers.
        let mut total = Counters::default();
        self.workers.iter().for_each(|w| total.add(&w.counters));
        for (name, v) in total.named() {
            let metric = format!("pipeline_{name}");
            let help = pipeline_help(name)
                .map_or_else(|| format!("Pipeline counter {name}"), str::to_owned);
            counter(e, &metric, &help, v)?;
        }
        family(
            e,
            "drops",
            "Packets dropped, by reason (sluicectl stats and docs/metrics.md describe each)",
            MetricType::Counter,
            ["reason"],
            DropReason::ALL
                .iter()
                .filter(|r| **r != DropReason::None)
                .map(|r| ([r.name().to_owned()], total.drop_count(*r))),
        )?;

        // Policy and conntrack, summed over workers (each keeps its own).
        let mut p = sluice_dataplane::policy::PolicyStats::default();
        self.workers.iter().for_each(|w| p.add(&w.policy));
        family(
            e,
            "policy_verdicts",
            "Packets the NetworkPolicy stages let through or dropped, by direction",
            MetricType::Counter,
            ["direction", "verdict"],
            [
                (["egress".into(), "allowed".into()], p.allowed_egress),
                (["egress".into(), "denied".into()], p.denied_egress),
                (["ingress".into(), "allowed".into()], p.allowed_ingress),
                (["ingress".into(), "denied".into()], p.denied_ingress),
            ],
        )?;
        counter(
            e,
            "policy_new_flows",
            "New flows classified and allowed (later packets hit the connection table)",
            p.new_flows,
        )?;
        gauge(
            e,
            "conntrack_entries",
            "Live connection-table entries",
            p.conntrack_entries,
        )?;
        counter(
            e,
            "conntrack_inserts",
            "Connection-table entries created",
            p.conntrack_inserts,
        )?;
        counter(
            e,
            "conntrack_evictions",
            "Connection-table entries evicted after their idle timeout",
            p.conntrack_evictions,
        )?;
        counter(
            e,
            "conntrack_removed",
            "Connection-table entries removed early (address reused, stale, reopened)",
            p.conntrack_removed,
        )?;
        counter(
            e,
            "conntrack_full",
            "New flows refused because the connection table was full of live entries",
            p.conntrack_full,
        )?;

        // Tables and state.
        family(
            e,
            "table_entries",
            "Entries in the published forwarding tables",
            MetricType::Gauge,
            ["table"],
            [
                (["routes".to_owned()], self.routes as u64),
                (["endpoints".to_owned()], self.endpoints as u64),
                (["tunnels".to_owned()], self.tunnels as u64),
            ],
        )?;
        gauge(
            e,
            "table_generation",
            "Generation of the published tables (grows with every change)",
            self.generation,
        )?;
        family(
            e,
            "attachments",
            "Pod attachments in the node state, by whether their interface is attached",
            MetricType::Gauge,
            ["state"],
            [
                (["attached".to_owned()], self.attached as u64),
                (["detached".to_owned()], self.detached as u64),
            ],
        )?;
        gauge(e, "peers", "Peer nodes known", self.peers as u64)?;
        gauge(
            e,
            "ipam_addresses_free",
            "Pod addresses still free in this node's range",
            self.addresses_free,
        )?;

        // CNI.
        let mut ops: BTreeMap<&str, u64> = CNI_OPS.iter().map(|op| (*op, 0)).collect();
        for (op, n) in &self.cni_ops {
            ops.insert(op, *n);
        }
        family(
            e,
            "cni_operations",
            "CNI requests served, by operation, failures included",
            MetricType::Counter,
            ["op"],
            ops.into_iter().map(|(op, n)| ([op.to_owned()], n)),
        )?;
        Ok(())
    }
}

/// Starts serving `GET /metrics` for `agent` on `listen`.
pub fn serve(listen: SocketAddr, agent: Arc<Agent>) -> Result<MetricsServer, MetricsError> {
    let s = http::serve_with(listen, move || render(Snapshot::gather(&agent)))?;
    tracing::info!(listen = %s.local_addr(), "metrics endpoint ready");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut counters = Counters {
            rx_packets: 10,
            vxlan_encap: 4,
            ..Counters::default()
        };
        counters.drops[DropReason::NoEndpoint as usize] = 3;
        let pod_port = PortStats {
            rx_packets: 5,
            rx_bytes: 500,
            tx_packets: 7,
            tx_bytes: 700,
            tx_dropped: 1,
            offload: sluice_dataplane::port::PortOffload {
                rx_kernel_drops: 20,
                ..Default::default()
            },
            ..PortStats::default()
        };
        let w0 = WorkerStats {
            worker: 0,
            counters: counters.clone(),
            ports: vec![
                (
                    PortId::UPLINK,
                    "ul0".into(),
                    PortStats {
                        tx_packets: 4,
                        offload: sluice_dataplane::port::PortOffload {
                            rx_kernel_drops: 6,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                ),
                (PortId::HOST, "sluice0".into(), PortStats::default()),
                (PortId(2), "eth0".into(), pod_port.clone()),
                // Not in the endpoint table yet (an ADD in progress): left out.
                (PortId(9), "eth0".into(), pod_port.clone()),
            ],
            busy_polls: 11,
            idle_polls: 12,
            sleeps: 13,
            ..WorkerStats::default()
        };
        let w1 = WorkerStats {
            worker: 1,
            counters,
            // A second interface of the same pod, on another worker.
            ports: vec![(PortId(3), "net1".into(), pod_port)],
            ..WorkerStats::default()
        };
        let web = PodLabels {
            namespace: "shop".into(),
            pod: "web-1".into(),
        };
        Snapshot {
            node: "node1".into(),
            version: "0.1.0".into(),
            mode: "vxlan".into(),
            backend: "socket".into(),
            uptime: Duration::from_millis(1500),
            workers: vec![w0, w1],
            pods: [(PortId(2), web.clone()), (PortId(3), web)].into(),
            routes: 4,
            endpoints: 2,
            tunnels: 1,
            generation: 9,
            cni_ops: [("add".to_owned(), 2)].into(),
            attached: 2,
            detached: 0,
            peers: 1,
            addresses_free: 250,
        }
    }

    /// (name with labels, value) of every sample, and the TYPE of every family.
    fn parse(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        let mut helps = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (n, t) = rest.split_once(' ').expect("TYPE line");
                assert!(
                    types.insert(n.to_owned(), t.to_owned()).is_none(),
                    "{n} typed twice"
                );
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (n, h) = rest.split_once(' ').expect("HELP line");
                assert!(!h.is_empty());
                helps.insert(n.to_owned(), h.to_owned());
            } else {
                let (k, v) = line.rsplit_once(' ').expect("sample line");
                assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
                assert!(
                    samples.insert(k.to_owned(), v.to_owned()).is_none(),
                    "{k} twice"
                );
            }
        }
        assert_eq!(
            types.keys().collect::<Vec<_>>(),
            helps.keys().collect::<Vec<_>>()
        );
        (samples, types)
    }

    #[test]
    fn encodes_every_family_with_help_and_type() {
        observe_cni("add", 0.003);
        let text = render(snapshot()).unwrap();
        let (samples, types) = parse(&text);
        for (name, t) in &types {
            assert!(name.starts_with("sluice_"), "{name}");
            assert!(
                !t.is_empty() && ["counter", "gauge", "histogram"].contains(&t.as_str()),
                "{name} {t}"
            );
        }
        let get = |k: &str| {
            samples
                .get(k)
                .unwrap_or_else(|| panic!("{k} missing in\n{text}"))
                .as_str()
        };
        assert_eq!(
            get(r#"sluice_build_info{version="0.1.0",mode="vxlan",backend="socket",node="node1"}"#),
            "1"
        );
        assert_eq!(get("sluice_uptime_seconds"), "1.5");
        // Pod counters from the pod's side, summed over its two interfaces.
        assert_eq!(
            get(r#"sluice_pod_rx_packets_total{namespace="shop",pod="web-1"}"#),
            "14"
        );
        assert_eq!(
            get(r#"sluice_pod_tx_bytes_total{namespace="shop",pod="web-1"}"#),
            "1000"
        );
        assert_eq!(
            get(r#"sluice_pod_rx_dropped_total{namespace="shop",pod="web-1"}"#),
            "2"
        );
        // What the pod's interfaces' queues could not hold: the ports'
        // kernel drops, from the pod's side.
        assert_eq!(
            get(r#"sluice_pod_tx_kernel_drops_total{namespace="shop",pod="web-1"}"#),
            "40"
        );
        assert_eq!(
            samples
                .keys()
                .filter(|k| k.starts_with("sluice_pod_rx_packets_total"))
                .count(),
            1
        );
        assert_eq!(
            get(r#"sluice_port_tx_packets_total{port="uplink",name="ul0"}"#),
            "4"
        );
        assert_eq!(
            get(r#"sluice_port_rx_kernel_drops_total{port="uplink",name="ul0"}"#),
            "6"
        );
        assert_eq!(
            get(r#"sluice_port_rx_packets_total{port="host",name="sluice0"}"#),
            "0"
        );
        assert_eq!(get(r#"sluice_worker_busy_polls_total{worker="0"}"#), "11");
        assert_eq!(get(r#"sluice_worker_idle_polls_total{worker="0"}"#), "12");
        assert_eq!(get(r#"sluice_worker_sleeps_total{worker="1"}"#), "0");
        assert_eq!(get("sluice_pipeline_vxlan_encap_total"), "8");
        assert_eq!(get("sluice_pipeline_rx_packets_total"), "20");
        assert_eq!(get(r#"sluice_drops_total{reason="no_endpoint"}"#), "6");
        assert_eq!(get(r#"sluice_drops_total{reason="ttl_expired"}"#), "0");
        assert!(!samples.contains_key(r#"sluice_drops_total{reason="none"}"#));
        assert_eq!(get(r#"sluice_table_entries{table="routes"}"#), "4");
        assert_eq!(get("sluice_table_generation"), "9");
        assert_eq!(get(r#"sluice_attachments{state="attached"}"#), "2");
        assert_eq!(get("sluice_peers"), "1");
        assert_eq!(get("sluice_ipam_addresses_free"), "250");
        assert_eq!(get(r#"sluice_cni_operations_total{op="add"}"#), "2");
        assert_eq!(get(r#"sluice_cni_operations_total{op="gc"}"#), "0");
        assert_eq!(types["sluice_cni_operation_duration_seconds"], "histogram");
        assert_eq!(
            get(r#"sluice_cni_operation_duration_seconds_bucket{op="add",le="+Inf"}"#)
                .parse::<u64>()
                .map(|n| n >= 1),
            Ok(true)
        );
        assert!(samples
            .contains_key(r#"sluice_cni_operation_duration_seconds_bucket{op="del",le="0.005"}"#));
        assert!(samples.contains_key(r#"sluice_cni_operation_duration_seconds_count{op="check"}"#));
        assert_eq!(types["sluice_drops_total"], "counter");
        assert_eq!(types["sluice_table_entries"], "gauge");
    }

    #[test]
    fn docs_describe_every_family_and_drop_reason() {
        let docs = include_str!("../../../docs/metrics.md");
        let text = render(snapshot()).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(
                    docs.contains(&format!("| `{name}` |")),
                    "docs/metrics.md does not describe {name}"
                );
            }
        }
        for r in DropReason::ALL.iter().filter(|r| **r != DropReason::None) {
            assert!(
                docs.contains(&format!("| `{}` | {} |", r.name(), r.description())),
                "docs/metrics.md does not describe drop reason {}",
                r.name()
            );
        }
    }

    #[test]
    fn every_pipeline_counter_has_its_own_help() {
        for (name, _) in Counters::default().named() {
            assert!(
                pipeline_help(name).is_some(),
                "no help for pipeline counter {name}"
            );
        }
    }

    #[test]
    fn observe_ignores_nonsense() {
        observe_cni("gc", f64::NAN);
        observe_cni("gc", -1.0);
        let text = render(Snapshot::default()).unwrap();
        assert!(text.contains("sluice_cni_operation_duration_seconds_sum{op=\"gc\"} "));
        assert!(!text.contains("NaN"), "{text}");
    }
}
