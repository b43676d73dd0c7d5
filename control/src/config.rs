//! sluiced's configuration: `/etc/sluice/sluiced.toml`.
//!
//! Loading happens in two steps, because part of the defaults depend on the host:
//!
//! 1. [`Config::load`] / [`Config::parse`] read the file strictly (unknown keys are errors, every
//!    value is range-checked) and check every rule that needs no host facts.
//! 2. [`Config::resolve`] takes what the daemon learnt about the uplink ([`UplinkFacts`]) and
//!    fills the rest (node address, MTU, VTEP MAC) into a [`Resolved`], checking the rules that
//!    involve the node address and the uplink MTU.
//!
//! [`EXAMPLE`] is the commented example installed as `/etc/sluice/sluiced.toml.example`.

use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use sluice_dataplane::sys::sched;
use sluice_dataplane::table::{default_vtep_mac, Mode, NodeParams, Prefix};
use sluice_dataplane::wire::MacAddr;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where sluiced reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/sluice/sluiced.toml";

/// Largest configuration file accepted, in bytes.
pub const MAX_FILE: u64 = 1 << 20;

const VNI: RangeInclusive<i64> = 1..=16_777_215;
const PORT: RangeInclusive<i64> = 1..=65_535;
/// Every IPv4 host must accept 576-byte datagrams (RFC 791); less is a misconfiguration.
const MTU: RangeInclusive<i64> = 576..=65_535;
const WORKERS: RangeInclusive<i64> = 1..=1024;
const CONNTRACK: RangeInclusive<i64> = 1024..=67_108_864;
/// Busy-poll window in microseconds: none up to one second.
const BUSY_POLL: RangeInclusive<i64> = 0..=1_000_000;
const BLOCK_SIZE: RangeInclusive<i64> = 16..=30;
/// TAP `txqueuelen` in frames: fewer than 64 cut a pod's burst short; more
/// than 65536 would be tens of milliseconds of queue.
const TAP_QUEUE: RangeInclusive<i64> = 64..=65_536;
/// A worker thread's nice value: what Linux takes.
const NICE: RangeInclusive<i64> =
    (*sched::NICE_RANGE.start() as i64)..=(*sched::NICE_RANGE.end() as i64);
/// One second to one year.
const GRACE: RangeInclusive<i64> = 1..=31_536_000;
/// A node record's lease in etcd: long enough to ride out a keepalive or two lost.
const LEASE_TTL: RangeInclusive<i64> = 2..=3600;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TOML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("line {line}: unknown key `{key}`: expected {expected}")]
    UnknownKey {
        /// Dotted path, e.g. `peers[1].nmae`.
        key: String,
        line: usize,
        expected: String,
    },
    #[error("missing key `{key}`: expected {expected}")]
    MissingKey { key: String, expected: String },
    #[error("invalid {key} {value:?}: expected {expected}")]
    InvalidConfig {
        /// Dotted path, e.g. `vni` or `peers[0].pod_cidr`.
        key: String,
        /// The value as written (strings without their quotes).
        value: String,
        expected: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl ToString,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::InvalidConfig {
        key: key.into(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// How the dataplane reaches the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkBackend {
    /// AF_XDP where the driver binds it zero-copy, and in IPIP mode wherever
    /// it binds; else a packet socket.
    #[default]
    Auto,
    AfXdp,
    Socket,
}

/// Where cluster-wide state (node records, IPAM blocks) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Datastore {
    /// Static: this file's pod_cidr and peers, state in state_dir.
    #[default]
    File,
    Etcd,
}

/// A statically configured peer node (datastore = "file").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    #[serde(with = "text")]
    pub node_ip: Ipv4Addr,
    #[serde(with = "text")]
    pub pod_cidr: Prefix,
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}

/// The file as written, with file-level defaults filled in. See [`EXAMPLE`] for every key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_node_name")]
    pub node_name: String,
    #[serde(default, with = "text")]
    pub mode: Mode,
    pub uplink: String,
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<Ipv4Addr>,
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Prefix>,
    #[serde(with = "text")]
    pub cluster_cidr: Prefix,
    #[serde(default = "default_vni", deserialize_with = "de_vni")]
    pub vni: u32,
    #[serde(default = "default_vxlan_port", deserialize_with = "de_port")]
    pub vxlan_port: u16,
    #[serde(
        default,
        deserialize_with = "de_mtu",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<u16>,
    #[serde(default = "default_workers", deserialize_with = "de_workers")]
    pub workers: u16,
    #[serde(default)]
    pub uplink_backend: UplinkBackend,
    #[serde(default = "default_xdp_superframe_socket")]
    pub xdp_superframe_socket: bool,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    #[serde(default = "default_metrics_listen", with = "text")]
    pub metrics_listen: SocketAddr,
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
    #[serde(default = "default_host_port")]
    pub host_port: bool,
    #[serde(default = "default_host_ifname")]
    pub host_ifname: String,
    #[serde(
        default = "default_conntrack_size",
        deserialize_with = "de_conntrack_size"
    )]
    pub conntrack_size: u32,
    #[serde(default = "default_busy_poll_us", deserialize_with = "de_busy_poll")]
    pub busy_poll_us: u32,
    #[serde(
        default = "default_idle_cpu_poll_us",
        deserialize_with = "de_busy_poll"
    )]
    pub idle_cpu_poll_us: u32,
    #[serde(default = "default_yield_on_delivery")]
    pub yield_on_delivery: bool,
    #[serde(default = "default_worker_nice", deserialize_with = "de_nice")]
    pub worker_nice: i32,
    #[serde(
        default = "default_tap_queue_len",
        deserialize_with = "de_tap_queue_len"
    )]
    pub tap_queue_len: u32,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub datastore: Datastore,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    #[serde(default = "default_block_size", deserialize_with = "de_block_size")]
    pub block_size: u8,
    #[serde(default = "default_grace", deserialize_with = "de_grace")]
    pub node_grace_period_s: u64,
    #[serde(default = "default_lease_ttl", deserialize_with = "de_lease_ttl")]
    pub node_lease_ttl_s: u64,
    // Last: TOML writes arrays of tables after plain keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
}

/// What the daemon learnt about the uplink interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkFacts {
    pub mtu: u16,
    pub mac: MacAddr,
    /// Its IPv4 addresses, primary first.
    pub ipv4: Vec<Ipv4Addr>,
}

/// A peer with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPeer {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Prefix,
    pub vtep_mac: MacAddr,
}

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The datastore with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatastoreConfig {
    File,
    Etcd(EtcdConfig),
}

/// The configuration with every default filled in and every rule checked: what the daemon runs
/// with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub node_name: String,
    pub mode: Mode,
    pub uplink: String,
    pub uplink_mac: MacAddr,
    pub uplink_mtu: u16,
    pub node_ip: Ipv4Addr,
    /// `None` only with the etcd datastore, which allocates blocks instead.
    pub pod_cidr: Option<Prefix>,
    pub cluster_cidr: Prefix,
    pub vni: u32,
    pub vxlan_port: u16,
    pub pod_mtu: u16,
    pub workers: u16,
    pub uplink_backend: UplinkBackend,
    /// With AF_XDP in VXLAN mode, send superframes as UDP superframes through
    /// a send-only packet socket (see `XdpConfig::superframe_socket`).
    pub xdp_superframe_socket: bool,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub vtep_mac: MacAddr,
    pub host_port: bool,
    pub host_ifname: String,
    pub conntrack_size: u32,
    /// How long a worker keeps polling after its last packet before it sleeps.
    pub busy_poll: Duration,
    /// How long a worker polls past `busy_poll` while no other task wants its CPU.
    pub idle_poll: Duration,
    /// Whether a worker gives up its CPU after delivering to a pod or the node.
    pub yield_on_delivery: bool,
    /// Nice value of the worker threads.
    pub worker_nice: i32,
    /// `txqueuelen` of the TAPs: frames a pod (or the node) may queue for a worker.
    pub tap_queue_len: u32,
    pub log_level: String,
    pub peers: Vec<ResolvedPeer>,
    pub datastore: DatastoreConfig,
    pub block_size: u8,
    pub node_grace_period: Duration,
    /// TTL of this node's record in etcd; peers withdraw its routes that long after it stops.
    pub node_lease_ttl: Duration,
}

impl Resolved {
    /// The dataplane's per-node parameters. `host_mac` is left for the daemon to fill once the
    /// host port exists.
    pub fn node_params(&self) -> NodeParams {
        let mut p = NodeParams::new(self.mode, self.node_ip, self.uplink_mac, self.uplink_mtu);
        p.pod_mtu = self.pod_mtu;
        p.vtep_mac = self.vtep_mac;
        p.vni = self.vni;
        p.vxlan_port = self.vxlan_port;
        p
    }
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("file is larger than {MAX_FILE} bytes"),
            )));
        }
        Config::parse(&text)
    }

    /// Parses a configuration and checks every rule that needs no host facts.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let tree = DeTable::parse(text).map_err(|e| syntax_error(text, &e))?;
        let cfg: Config = toml::from_str(text).map_err(|e| data_error(text, &tree, &e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule that needs no host facts. [`Config::parse`] calls it; call it again
    /// after changing fields by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_node_name("node_name", &self.node_name)?;
        check_ifname("uplink", &self.uplink)?;
        check_ifname("host_ifname", &self.host_ifname)?;
        if self.host_port && self.host_ifname == self.uplink {
            return Err(invalid(
                "host_ifname",
                &self.host_ifname,
                "a name other than the uplink's",
            ));
        }
        self.check_cluster_cidr()?;
        match (self.pod_cidr, self.datastore) {
            (None, Datastore::File) => {
                return Err(ConfigError::MissingKey {
                    key: "pod_cidr".into(),
                    expected: "this node's pod CIDR inside cluster_cidr, e.g. \"198.19.1.0/24\" \
                               (optional only with datastore = \"etcd\")"
                        .into(),
                })
            }
            (Some(p), _) if !self.cluster_cidr.contains_prefix(&p) => {
                return Err(invalid(
                    "pod_cidr",
                    p,
                    format!("a prefix inside cluster_cidr {}", self.cluster_cidr),
                ))
            }
            _ => {}
        }
        if let Some(ip) = self.node_ip {
            self.check_node_ip(ip, "")?;
        }
        if let Some(mac) = self.vtep_mac {
            check_mac("vtep_mac", mac)?;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if usize::from(self.workers) > cpus {
            return Err(invalid(
                "workers",
                self.workers,
                format!("at most the number of CPUs this process may use ({cpus})"),
            ));
        }
        check_abs("state_dir", &self.state_dir)?;
        check_abs("api_socket", &self.api_socket)?;
        check_log_level(&self.log_level)?;
        if i64::from(self.block_size) < i64::from(self.cluster_cidr.prefix_len()) {
            return Err(invalid(
                "block_size",
                self.block_size,
                format!(
                    "a block no larger than cluster_cidr {} (at least /{})",
                    self.cluster_cidr,
                    self.cluster_cidr.prefix_len()
                ),
            ));
        }
        self.check_datastore()?;
        self.check_peers()
    }

    /// Fills the defaults that depend on the host and checks the rules that involve the node
    /// address and the uplink MTU.
    pub fn resolve(&self, uplink: &UplinkFacts) -> Result<Resolved, ConfigError> {
        self.validate()?;
        let node_ip = match self.node_ip {
            Some(ip) => ip,
            None => {
                let ip = *uplink.ipv4.first().ok_or_else(|| {
                    invalid(
                        "node_ip",
                        "",
                        format!(
                            "an IPv4 address: node_ip is not set and uplink {} has none",
                            self.uplink
                        ),
                    )
                })?;
                self.check_node_ip(ip, " (the uplink's first IPv4 address; set node_ip)")?;
                ip
            }
        };
        for (i, p) in self.peers.iter().enumerate() {
            if p.node_ip == node_ip {
                return Err(invalid(
                    format!("peers[{i}].node_ip"),
                    p.node_ip,
                    format!("an address other than this node's ({node_ip})"),
                ));
            }
        }
        let overhead = self.mode.overhead();
        let max_mtu = uplink.mtu.saturating_sub(overhead);
        let why = format!(
            "uplink {} MTU {} minus {overhead} for {}",
            self.uplink, uplink.mtu, self.mode
        );
        let pod_mtu = match self.mtu {
            Some(m) if m > max_mtu => {
                return Err(invalid("mtu", m, format!("at most {max_mtu} ({why})")))
            }
            Some(m) => m,
            None if i64::from(max_mtu) < *MTU.start() => {
                return Err(invalid(
                    "mtu",
                    max_mtu,
                    format!(
                        "a pod MTU of at least {}, but {why} leaves less",
                        MTU.start()
                    ),
                ))
            }
            None => max_mtu,
        };
        let datastore = match self.datastore {
            Datastore::File => DatastoreConfig::File,
            Datastore::Etcd => DatastoreConfig::Etcd(EtcdConfig {
                endpoints: self.etcd_endpoints.clone(),
                ca: self.etcd_ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            }),
        };
        Ok(Resolved {
            node_name: self.node_name.clone(),
            mode: self.mode,
            uplink: self.uplink.clone(),
            uplink_mac: uplink.mac,
            uplink_mtu: uplink.mtu,
            node_ip,
            pod_cidr: self.pod_cidr,
            cluster_cidr: self.cluster_cidr,
            vni: self.vni,
            vxlan_port: self.vxlan_port,
            pod_mtu,
            workers: self.workers,
            uplink_backend: self.uplink_backend,
            xdp_superframe_socket: self.xdp_superframe_socket,
            state_dir: self.state_dir.clone(),
            api_socket: self.api_socket.clone(),
            metrics_listen: self.metrics_listen,
            vtep_mac: self.vtep_mac.unwrap_or_else(|| default_vtep_mac(node_ip)),
            host_port: self.host_port,
            host_ifname: self.host_ifname.clone(),
            conntrack_size: self.conntrack_size,
            busy_poll: Duration::from_micros(u64::from(self.busy_poll_us)),
            idle_poll: Duration::from_micros(u64::from(self.idle_cpu_poll_us)),
            yield_on_delivery: self.yield_on_delivery,
            worker_nice: self.worker_nice,
            tap_queue_len: self.tap_queue_len,
            log_level: self.log_level.clone(),
            peers: self
                .peers
                .iter()
                .map(|p| ResolvedPeer {
                    name: p.name.clone(),
                    node_ip: p.node_ip,
                    pod_cidr: p.pod_cidr,
                    vtep_mac: p.vtep_mac.unwrap_or_else(|| default_vtep_mac(p.node_ip)),
                })
                .collect(),
            datastore,
            block_size: self.block_size,
            node_grace_period: Duration::from_secs(self.node_grace_period_s),
            node_lease_ttl: Duration::from_secs(self.node_lease_ttl_s),
        })
    }

    fn check_cluster_cidr(&self) -> Result<(), ConfigError> {
        let c = self.cluster_cidr;
        if c.prefix_len() < 8 {
            return Err(invalid("cluster_cidr", c, "a prefix of length 8 or more"));
        }
        for (r, what) in reserved() {
            if c.contains_prefix(&r) || r.contains_prefix(&c) {
                return Err(invalid(
                    "cluster_cidr",
                    c,
                    format!("a range that does not overlap {r} ({what})"),
                ));
            }
        }
        Ok(())
    }

    /// The rules on the node address; `origin` explains where it came from.
    fn check_node_ip(&self, ip: Ipv4Addr, origin: &str) -> Result<(), ConfigError> {
        check_unicast("node_ip", ip)?;
        if self.cluster_cidr.contains(ip) {
            return Err(invalid(
                "node_ip",
                ip,
                format!(
                    "an underlay address outside cluster_cidr {}{origin}",
                    self.cluster_cidr
                ),
            ));
        }
        Ok(())
    }

    fn check_datastore(&self) -> Result<(), ConfigError> {
        if self.datastore == Datastore::File {
            let set = [
                ("etcd_endpoints", !self.etcd_endpoints.is_empty()),
                ("etcd_ca", self.etcd_ca.is_some()),
                ("etcd_cert", self.etcd_cert.is_some()),
                ("etcd_key", self.etcd_key.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
                return Err(invalid(
                    *key,
                    "(set)",
                    "no etcd settings unless datastore = \"etcd\"",
                ));
            }
            return Ok(());
        }
        if self.etcd_endpoints.is_empty() {
            return Err(ConfigError::MissingKey {
                key: "etcd_endpoints".into(),
                expected: "a list of etcd URLs, e.g. [\"https://198.18.0.10:2379\"] \
                           (required with datastore = \"etcd\")"
                    .into(),
            });
        }
        for (i, url) in self.etcd_endpoints.iter().enumerate() {
            check_url(&format!("etcd_endpoints[{i}]"), url)?;
        }
        for (key, p) in [
            ("etcd_ca", &self.etcd_ca),
            ("etcd_cert", &self.etcd_cert),
            ("etcd_key", &self.etcd_key),
        ] {
            if let Some(p) = p {
                check_abs(key, p)?;
            }
        }
        match (&self.etcd_cert, &self.etcd_key) {
            (Some(c), None) => Err(invalid(
                "etcd_cert",
                c.display(),
                "etcd_cert and etcd_key set together",
            )),
            (None, Some(k)) => Err(invalid(
                "etcd_key",
                k.display(),
                "etcd_cert and etcd_key set together",
            )),
            _ => Ok(()),
        }
    }

    fn check_peers(&self) -> Result<(), ConfigError> {
        for (i, p) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("peers[{i}].{field}");
            check_node_name(&key("name"), &p.name)?;
            if p.name == self.node_name {
                return Err(invalid(
                    key("name"),
                    &p.name,
                    "a name other than this node's node_name",
                ));
            }
            check_unicast(&key("node_ip"), p.node_ip)?;
            if self.cluster_cidr.contains(p.node_ip) {
                return Err(invalid(
                    key("node_ip"),
                    p.node_ip,
                    format!(
                        "an underlay address outside cluster_cidr {}",
                        self.cluster_cidr
                    ),
                ));
            }
            if Some(p.node_ip) == self.node_ip {
                return Err(invalid(
                    key("node_ip"),
                    p.node_ip,
                    "an address other than this node's node_ip",
                ));
            }
            if !self.cluster_cidr.contains_prefix(&p.pod_cidr) {
                return Err(invalid(
                    key("pod_cidr"),
                    p.pod_cidr,
                    format!("a prefix inside cluster_cidr {}", self.cluster_cidr),
                ));
            }
            if let Some(ours) = self.pod_cidr {
                if overlaps(&ours, &p.pod_cidr) {
                    return Err(invalid(
                        key("pod_cidr"),
                        p.pod_cidr,
                        format!("a prefix that does not overlap this node's pod_cidr {ours}"),
                    ));
                }
            }
            if let Some(mac) = p.vtep_mac {
                check_mac(&key("vtep_mac"), mac)?;
            }
            for (j, q) in self.peers[..i].iter().enumerate() {
                let clash = if q.name == p.name {
                    Some(("name", p.name.clone(), "a name"))
                } else if q.node_ip == p.node_ip {
                    Some(("node_ip", p.node_ip.to_string(), "an address"))
                } else if overlaps(&q.pod_cidr, &p.pod_cidr) {
                    Some(("pod_cidr", p.pod_cidr.to_string(), "a prefix"))
                } else {
                    None
                };
                if let Some((field, value, what)) = clash {
                    return Err(invalid(
                        key(field),
                        value,
                        format!("{what} distinct from peers[{j}].{field}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Ranges the pod network must stay clear of.
fn reserved() -> impl Iterator<Item = (Prefix, &'static str)> {
    [
        ([0, 0, 0, 0], 8, "\"this\" network"),
        ([127, 0, 0, 0], 8, "loopback"),
        (
            [169, 254, 0, 0],
            16,
            "link-local, where the pods' gateway lives",
        ),
        ([224, 0, 0, 0], 3, "multicast and reserved"),
    ]
    .into_iter()
    .filter_map(|(a, len, what)| Some((Prefix::new(Ipv4Addr::from(a), len).ok()?, what)))
}

fn overlaps(a: &Prefix, b: &Prefix) -> bool {
    a.contains_prefix(b) || b.contains_prefix(a)
}

fn check_unicast(key: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(invalid(
            key,
            ip,
            "a unicast IPv4 address (not 0.0.0.0, loopback, multicast or broadcast)",
        ));
    }
    Ok(())
}

fn check_mac(key: &str, mac: MacAddr) -> Result<(), ConfigError> {
    if mac.is_multicast() || mac == MacAddr::ZERO {
        return Err(invalid(key, mac, "a unicast, non-zero MAC address"));
    }
    Ok(())
}

fn check_abs(key: &str, p: &Path) -> Result<(), ConfigError> {
    if !p.is_absolute() {
        return Err(invalid(key, p.display(), "an absolute path"));
    }
    Ok(())
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..".
fn check_ifname(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if !ok {
        return Err(invalid(
            key,
            name,
            "an interface name of 1 to 15 characters without '/', ':' or spaces",
        ));
    }
    Ok(())
}

/// Kubernetes node names are DNS-1123 subdomains.
fn check_node_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 253
        && b.iter().all(|&c| alnum(c) || c == b'-' || c == b'.')
        && alnum(b[0])
        && alnum(b[b.len() - 1]);
    if !ok {
        let expected = "a Kubernetes node name: lowercase letters, digits, '-' and '.', \
                        starting and ending with a letter or digit, at most 253 characters";
        let expected = if name.is_empty() && key == "node_name" {
            format!("{expected} (the hostname could not be read; set node_name)")
        } else {
            expected.to_owned()
        };
        return Err(invalid(key, name, expected));
    }
    Ok(())
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A level, or comma-separated `level` / `target=level` directives.
fn check_log_level(s: &str) -> Result<(), ConfigError> {
    let directive_ok = |d: &str| {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, d),
        };
        LEVELS.contains(&level)
            && target.is_none_or(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            })
    };
    if s.is_empty() || !s.split(',').all(directive_ok) {
        return Err(invalid(
            "log_level",
            s,
            "off, error, warn, info, debug or trace, or directives like \
             \"info,sluice_dataplane=debug\"",
        ));
    }
    Ok(())
}

/// `http://host[:port][/]` or `https://...`.
fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        let hostport = r.strip_suffix('/').unwrap_or(r);
        !hostport.is_empty()
            && !hostport
                .chars()
                .any(|c| c == '/' || c == '@' || c.is_whitespace() || c.is_control())
    });
    if !ok {
        return Err(invalid(
            key,
            url,
            "an etcd URL like \"https://198.18.0.10:2379\"",
        ));
    }
    Ok(())
}

// --- Defaults -------------------------------------------------------------------------------

/// The hostname, lowercased as kubelet does; empty if it cannot be read (validation then
/// asks for node_name).
fn default_node_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}
fn default_vni() -> u32 {
    4096
}
fn default_vxlan_port() -> u16 {
    4789
}
fn default_workers() -> u16 {
    1
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sluice")
}
fn default_api_socket() -> PathBuf {
    PathBuf::from(crate::api::DEFAULT_SOCKET)
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9108))
}
fn default_host_port() -> bool {
    true
}
fn default_host_ifname() -> String {
    "sluice0".into()
}
fn default_idle_cpu_poll_us() -> u32 {
    200
}
fn default_yield_on_delivery() -> bool {
    true
}
fn default_xdp_superframe_socket() -> bool {
    true
}
fn default_worker_nice() -> i32 {
    -10
}
fn default_tap_queue_len() -> u32 {
    4096
}
fn default_busy_poll_us() -> u32 {
    30
}
fn default_conntrack_size() -> u32 {
    262_144
}
fn default_log_level() -> String {
    "info".into()
}
fn default_block_size() -> u8 {
    26
}
fn default_grace() -> u64 {
    3600
}
fn default_lease_ttl() -> u64 {
    10
}

// --- Serde helpers --------------------------------------------------------------------------
//
// Custom messages start with "expected ": `data_error` turns the text after it into
// `ConfigError::InvalidConfig::expected`, the same as for serde's own "invalid type" messages.

/// Types written as strings in the file.
trait ConfigText: Sized {
    const EXPECTED: &'static str;
    /// Parses; on failure, a detail to append to [`Self::EXPECTED`] (may be empty).
    fn from_text(s: &str) -> Result<Self, String>;
}

impl ConfigText for Mode {
    const EXPECTED: &'static str = "one of \"vxlan\", \"ipip\", \"native\"";
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| String::new())
    }
}

impl ConfigText for Prefix {
    const EXPECTED: &'static str = "an IPv4 prefix a.b.c.d/len without host bits";
    fn from_text(s: &str) -> Result<Self, String> {
        if !s.contains('/') {
            return Err(String::new());
        }
        s.parse::<Prefix>().map_err(|e| match e {
            sluice_dataplane::table::lpm::PrefixError::HostBits(_, fixed) => {
                format!(" (did you mean {fixed}?)")
            }
            _ => String::new(),
        })
    }
}

impl ConfigText for MacAddr {
    const EXPECTED: &'static str = "a MAC address like \"02:00:00:00:00:01\"";
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| String::new())
    }
}

impl ConfigText for Ipv4Addr {
    const EXPECTED: &'static str = "an IPv4 address like \"198.18.0.1\"";
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| String::new())
    }
}

impl ConfigText for SocketAddr {
    const EXPECTED: &'static str = "a socket address like \"127.0.0.1:9108\"";
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| String::new())
    }
}

struct TextVisitor<T>(std::marker::PhantomData<T>);

impl<T: ConfigText> Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        T::from_text(s).map_err(|detail| E::custom(format!("expected {}{detail}", T::EXPECTED)))
    }
}

/// `#[serde(with = "text")]`: a value written as a string.
mod text {
    use super::*;

    pub fn serialize<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T: ConfigText, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        d.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// `#[serde(default, with = "opt_text")]`: an optional value written as a string.
mod opt_text {
    use super::*;

    pub fn serialize<T: fmt::Display, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: ConfigText, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        text::deserialize(d).map(Some)
    }
}

struct IntVisitor(RangeInclusive<i64>);

impl Visitor<'_> for IntVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer {}..={}", self.0.start(), self.0.end())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        if self.0.contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format!(
                "expected an integer {}..={}",
                self.0.start(),
                self.0.end()
            )))
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

fn ranged<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
    d: D,
    range: RangeInclusive<i64>,
) -> Result<T, D::Error> {
    let v = d.deserialize_i64(IntVisitor(range))?;
    // The range fits T by construction of the constants above.
    T::try_from(v).map_err(|_| de::Error::custom("expected an integer that fits"))
}

fn de_vni<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, VNI)
}
fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    ranged(d, PORT)
}
fn de_mtu<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    ranged(d, MTU).map(Some)
}
fn de_workers<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    ranged(d, WORKERS)
}
fn de_conntrack_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, CONNTRACK)
}
fn de_busy_poll<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, BUSY_POLL)
}
fn de_nice<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    ranged(d, NICE)
}
fn de_tap_queue_len<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, TAP_QUEUE)
}
fn de_block_size<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    ranged(d, BLOCK_SIZE)
}
fn de_grace<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, GRACE)
}
fn de_lease_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ranged(d, LEASE_TTL)
}

// --- Error locations ------------------------------------------------------------------------

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
    ConfigError::Syntax {
        line,
        column,
        message: e.message().trim().to_owned(),
    }
}

/// Where a span sits in the parsed tree: the dotted key path, and the value if the span is a
/// value's (rather than a key's or a table's).
struct Located<'a> {
    path: String,
    value: Option<&'a DeValue<'a>>,
}

fn locate<'a>(table: &'a DeTable<'a>, span: &Range<usize>, prefix: &str) -> Option<Located<'a>> {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        if k.span() == *span {
            return Some(Located { path, value: None });
        }
        if let Some(found) = locate_value(v, span, path) {
            return Some(found);
        }
    }
    None
}

fn locate_value<'a>(
    v: &'a Spanned<DeValue<'a>>,
    span: &Range<usize>,
    path: String,
) -> Option<Located<'a>> {
    let vs = v.span();
    let inside = vs.start <= span.start && span.end <= vs.end;
    match v.get_ref() {
        DeValue::Table(t) => {
            locate(t, span, &path).or_else(|| inside.then_some(Located { path, value: None }))
        }
        DeValue::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, e)| locate_value(e, span, format!("{path}[{i}]")))
            .or_else(|| {
                inside.then_some(Located {
                    path,
                    value: (vs == *span).then_some(v.get_ref()),
                })
            }),
        other => inside.then_some(Located {
            path,
            value: Some(other),
        }),
    }
}

/// Text between backticks after `prefix`, e.g. the name in "unknown field `x`, expected ...".
fn backticked<'m>(msg: &'m str, prefix: &str) -> Option<&'m str> {
    msg.strip_prefix(prefix)?.split('`').next()
}

fn expected_part(msg: &str) -> String {
    match msg.find("expected ") {
        Some(i) => msg[i + "expected ".len()..].trim().to_owned(),
        None => msg.trim().to_owned(),
    }
}

/// What a required key holds, for "missing key" messages.
fn describe_required(key: &str) -> &'static str {
    match key {
        "uplink" => "the name of the node's uplink interface, e.g. \"eth0\"",
        "cluster_cidr" => "the cluster's pod address range, e.g. \"198.19.0.0/16\"",
        "name" => "the peer's Kubernetes node name",
        "node_ip" => "the peer's underlay IPv4 address",
        "pod_cidr" => "the peer's pod CIDR",
        _ => "a value",
    }
}

/// Turns a deserialisation error into one that names the key and the value.
fn data_error(text: &str, tree: &Spanned<DeTable<'_>>, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim();
    let span = e.span();
    let located = span.as_ref().and_then(|s| locate(tree.get_ref(), s, ""));
    let line = span.as_ref().map_or(1, |s| line_col(text, s.start).0);
    if let Some(name) = backticked(msg, "unknown field `") {
        // The span is the key's, so `located` is its full path.
        return ConfigError::UnknownKey {
            key: located.map_or_else(|| name.to_owned(), |l| l.path),
            line,
            expected: expected_part(msg),
        };
    }
    if let Some(name) = backticked(msg, "missing field `") {
        // The span, if any, is the table's; the top-level table has none of its own.
        let key = match located {
            Some(l) if !l.path.is_empty() => format!("{}.{name}", l.path),
            _ => name.to_owned(),
        };
        return ConfigError::MissingKey {
            key,
            expected: describe_required(name).to_owned(),
        };
    }
    let (key, value) = match &located {
        Some(l) => (
            l.path.clone(),
            match l.value {
                Some(DeValue::String(s)) => s.to_string(),
                _ => span
                    .as_ref()
                    .and_then(|s| text.get(s.clone()))
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            },
        ),
        None => (format!("(line {line})"), String::new()),
    };
    invalid(key, value, expected_part(msg))
}

// --- The example ----------------------------------------------------------------------------

/// A fully commented `sluiced.toml`, installed as `/etc/sluice/sluiced.toml.example`. Every
/// key is listed; commented-out keys show their default.
pub const EXAMPLE: &str = r#"# /etc/sluice/sluiced.toml: configuration of sluiced, the Sluice node daemon.
#
# Unknown keys are errors, so a misspelt key never silently changes behaviour.
# Lines starting with '#' show each key's default; uncomment a line to change it.

# ---- Identity ----------------------------------------------------------------

# This node's Kubernetes node name. Default: the hostname, lowercased.
# node_name = "node-1"

# ---- Underlay ----------------------------------------------------------------

# The interface that carries traffic to other nodes. Required.
uplink = "eth0"

# This node's underlay IPv4 address: the outer source of tunnelled packets and
# where peers send them. Default: the uplink's first IPv4 address.
# node_ip = "198.18.0.1"

# How the uplink is driven: "auto" (AF_XDP where the driver binds it
# zero-copy, and in IPIP mode; else a packet socket, which in copy mode
# carries more), "af_xdp" or "socket".
# uplink_backend = "auto"

# With AF_XDP, which has no segmentation offload, in VXLAN mode: send a pod's
# TCP superframe as UDP superframes through a send-only packet socket on the
# uplink, one skb each for the NIC (or the kernel) to cut into datagrams,
# rather than as a descriptor per segment. Native and IPIP superframes are
# always cut into frames.
# xdp_superframe_socket = true

# ---- Pod network -------------------------------------------------------------

# The whole pod address range of the cluster. Required. Every node's pod_cidr,
# and every peer's, lies inside it; node addresses lie outside it.
cluster_cidr = "198.19.0.0/16"

# This node's share of cluster_cidr, from which its pods get addresses.
# Required with datastore = "file"; with "etcd" the node takes blocks of
# block_size from the datastore when this is not set.
pod_cidr = "198.19.1.0/24"

# How pods on other nodes are reached:
#   "vxlan"  - VXLAN over UDP, works over any IP underlay (50 bytes overhead)
#   "ipip"   - IP-in-IP, needs protocol 4 to pass the underlay (20 bytes)
#   "native" - no encapsulation; the underlay must route pod CIDRs to nodes
# mode = "vxlan"

# The pods' MTU. Default: the uplink's MTU minus the mode's overhead
# (vxlan 50, ipip 20, native 0); a value given here may not exceed that.
# mtu = 1450

# ---- VXLAN -------------------------------------------------------------------

# VXLAN network identifier, 1..=16777215; the same on every node.
# vni = 4096

# UDP destination port of VXLAN packets; the same on every node.
# vxlan_port = 4789

# MAC address of this node's VTEP. Default: 02:53 followed by the four bytes
# of node_ip, which every Sluice node can compute for its peers.
# vtep_mac = "02:53:c6:12:00:01"

# ---- Dataplane ---------------------------------------------------------------

# Packet-processing threads, 1 up to the number of CPUs.
# workers = 1

# Connection-tracking entries (for network policy), 1024..=67108864.
# conntrack_size = 262144

# How long a worker keeps polling its ports after the last packet before it
# sleeps until one is readable, in microseconds (0..=1000000). Polling costs
# CPU, and on a core shared with pods it keeps them off it; sleeping costs
# about 15 us of latency per hop when the next packet comes. 0 sleeps at once.
# busy_poll_us = 30

# Past busy_poll_us, a worker polls on for up to this long after its last
# packet (microseconds, 0..=1000000) as long as no other task wants its CPU:
# each empty round yields once, and one that lets another task run ends the
# polling. A request/response application sharing the core then finds the
# worker still polling when its answer comes, instead of a halted CPU to wake
# (tens of microseconds on a VM); a sender sharing it is not kept waiting.
# Not above busy_poll_us: off.
# idle_cpu_poll_us = 200

# After a round that delivered packets to a pod (or to the node through the
# host port), give up the CPU so that the receiving application can run before
# the worker goes on. Where workers share cores with pods, a worker that keeps
# the CPU delivers faster than the application reads, and its socket overflows.
# On cores of their own workers find nobody to yield to.
# yield_on_delivery = true

# Nice value of the worker threads, -20..=19 (0: the pods' own). Below the
# pods', a worker sharing their core drains what they queue before they queue
# more, as the kernel's forwarding (softirq) runs ahead of the sockets it
# serves: a fast sender loses less at its TAP. Needs CAP_SYS_NICE; without it
# a worker runs on at the nice it has, and the log and `sluicectl stats` say
# why.
# worker_nice = -10

# Frames a pod (or the node, through the host port) may queue on its TAP for
# the worker, 64..=65536 (the TAP's txqueuelen). The kernel drops what a
# sender queues past it: no back-pressure reaches the sending socket. Where a
# worker shares its core with the pods, frames pile up while the pod runs and
# are taken when the worker does, so the queue must hold a scheduler slice's
# worth; with the kernel's default of 1000 a fast sender loses more. A pod
# keeps the queue it was attached with when sluiced restarts with another.
# tap_queue_len = 4096

# Attach the node's own network stack to the dataplane through a TAP device,
# so that the host (kubelet probes, hostNetwork pods) can reach pods.
# host_port = true

# Name of that device on the host.
# host_ifname = "sluice0"

# ---- Daemon ------------------------------------------------------------------

# Where sluiced keeps its state (allocations, attachments) across restarts.
# state_dir = "/var/lib/sluice"

# The Unix socket the CNI plugin and sluicectl talk to.
# api_socket = "/run/sluice/sluiced.sock"

# Address of the Prometheus metrics endpoint.
# metrics_listen = "127.0.0.1:9108"

# Log filter: off, error, warn, info, debug or trace, or per-module directives
# such as "info,sluice_dataplane=debug".
# log_level = "info"

# ---- Cluster state -----------------------------------------------------------

# Where node records and address blocks live: "file" (static: pod_cidr and the
# peers below, in this file) or "etcd" (shared by all nodes).
# datastore = "file"

# etcd endpoints; required with datastore = "etcd", refused otherwise.
# etcd_endpoints = ["https://198.18.0.10:2379"]

# TLS for etcd: CA bundle, client certificate and key (absolute paths; the
# certificate and key go together).
# etcd_ca = "/etc/sluice/etcd-ca.pem"
# etcd_cert = "/etc/sluice/etcd-client.pem"
# etcd_key = "/etc/sluice/etcd-client-key.pem"

# Size of the address blocks nodes take from cluster_cidr, as a prefix length
# 16..=30 (26 = 64 addresses).
# block_size = 26

# How long, in seconds, a node that stopped reporting keeps its blocks before
# they are reclaimed.
# node_grace_period_s = 3600

# TTL, in seconds, of this node's record in etcd (2..=3600). The node renews it
# every third of that; when it stops, its peers withdraw its routes after this.
# node_lease_ttl_s = 10

# ---- Static peers (datastore = "file") ---------------------------------------

# One [[peers]] table per other node. name, node_ip and pod_cidr are required;
# vtep_mac defaults to the one derived from the peer's node_ip.
# [[peers]]
# name = "node-2"
# node_ip = "198.18.0.2"
# pod_cidr = "198.19.2.0/24"
# vtep_mac = "02:53:c6:12:00:02"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "uplink = \"eth0\"\ncluster_cidr = \"198.19.0.0/16\"\n\
                        pod_cidr = \"198.19.1.0/24\"\nnode_name = \"node-1\"\n";

    fn with(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}{extra}\n"))
    }

    fn facts() -> UplinkFacts {
        UplinkFacts {
            mtu: 1500,
            mac: MacAddr([0x02, 0, 0, 0, 0, 0x01]),
            ipv4: vec![Ipv4Addr::new(198, 18, 0, 1)],
        }
    }

    /// The error for `extra` names `key` and `value`.
    #[track_caller]
    fn rejects(extra: &str, key: &str, value: &str) -> ConfigError {
        let e = with(extra).expect_err(extra);
        let msg = e.to_string();
        assert!(msg.contains(key), "{extra:?}: {msg:?} does not name {key}");
        assert!(
            msg.contains(value),
            "{extra:?}: {msg:?} does not name {value}"
        );
        e
    }

    #[test]
    fn defaults() {
        let c = Config::parse(
            "uplink = \"eth0\"\ncluster_cidr = \"198.19.0.0/16\"\npod_cidr = \"198.19.1.0/24\"\n",
        )
        .unwrap();
        assert_eq!(c.node_name, default_node_name());
        assert_eq!(c.mode, Mode::Vxlan);
        assert_eq!(c.node_ip, None);
        assert_eq!(c.vni, 4096);
        assert_eq!(c.vxlan_port, 4789);
        assert_eq!(c.mtu, None);
        assert_eq!(c.workers, 1);
        assert_eq!(c.uplink_backend, UplinkBackend::Auto);
        assert!(c.xdp_superframe_socket);
        assert_eq!(c.state_dir, Path::new("/var/lib/sluice"));
        assert_eq!(c.api_socket, Path::new("/run/sluice/sluiced.sock"));
        assert_eq!(c.metrics_listen, "127.0.0.1:9108".parse().unwrap());
        assert_eq!(c.vtep_mac, None);
        assert!(c.host_port);
        assert_eq!(c.host_ifname, "sluice0");
        assert_eq!(c.conntrack_size, 262_144);
        assert_eq!(c.busy_poll_us, 30);
        assert_eq!(c.idle_cpu_poll_us, 200);
        assert!(c.yield_on_delivery);
        assert_eq!(c.worker_nice, -10);
        assert_eq!(c.tap_queue_len, 4096);
        assert_eq!(c.log_level, "info");
        assert!(c.peers.is_empty());
        assert_eq!(c.datastore, Datastore::File);
        assert!(c.etcd_endpoints.is_empty());
        assert_eq!(c.block_size, 26);
        assert_eq!(c.node_grace_period_s, 3600);
        assert_eq!(c.node_lease_ttl_s, 10);
    }

    #[test]
    fn every_key_set() {
        let c = Config::parse(
            r#"
node_name = "n1.example"
mode = "ipip"
uplink = "ens3"
node_ip = "198.18.0.7"
pod_cidr = "198.19.7.0/24"
cluster_cidr = "198.19.0.0/16"
vni = 77
vxlan_port = 8472
mtu = 1400
workers = 1
uplink_backend = "af_xdp"
xdp_superframe_socket = false
state_dir = "/tmp/sluice"
api_socket = "/tmp/sluice.sock"
metrics_listen = "[::1]:9200"
vtep_mac = "02:aa:bb:cc:dd:ee"
host_port = false
host_ifname = "sl0"
conntrack_size = 4096
busy_poll_us = 0
idle_cpu_poll_us = 0
yield_on_delivery = false
worker_nice = 0
tap_queue_len = 64
log_level = "debug,sluice_dataplane::stage=trace"
datastore = "etcd"
etcd_endpoints = ["https://198.18.0.10:2379", "http://198.18.0.11:2379/"]
etcd_ca = "/etc/ca.pem"
etcd_cert = "/etc/c.pem"
etcd_key = "/etc/k.pem"
block_size = 28
node_grace_period_s = 60

[[peers]]
name = "n2"
node_ip = "198.18.0.8"
pod_cidr = "198.19.8.0/24"
vtep_mac = "02:00:00:00:00:08"
"#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Ipip);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.uplink_backend, UplinkBackend::AfXdp);
        assert!(!c.xdp_superframe_socket);
        assert_eq!(c.metrics_listen.port(), 9200);
        assert_eq!(c.busy_poll_us, 0);
        assert_eq!(c.idle_cpu_poll_us, 0);
        assert!(!c.yield_on_delivery);
        assert_eq!(c.worker_nice, 0);
        assert_eq!(c.tap_queue_len, 64);
        assert_eq!(c.datastore, Datastore::Etcd);
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.peers[0].vtep_mac, Some(MacAddr([2, 0, 0, 0, 0, 8])));
        // Serialising and parsing again gives the same configuration.
        let again = Config::parse(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_values_name_key_and_value() {
        rejects("mode = \"vxlna\"", "mode", "vxlna");
        rejects("mode = 3", "mode", "3");
        rejects("node_ip = \"198.18.0\"", "node_ip", "198.18.0");
        rejects("node_ip = \"0.0.0.0\"", "node_ip", "0.0.0.0");
        rejects("node_ip = \"198.19.0.9\"", "node_ip", "198.19.0.9");
        rejects("vni = 0", "vni", "0");
        rejects("vni = 16777216", "vni", "16777216");
        rejects("vni = \"4096\"", "vni", "4096");
        rejects("vxlan_port = 0", "vxlan_port", "0");
        rejects("vxlan_port = 65536", "vxlan_port", "65536");
        rejects("mtu = 100", "mtu", "100");
        rejects("mtu = 1.5", "mtu", "1.5");
        rejects("workers = 0", "workers", "0");
        rejects("workers = 1024", "workers", "1024");
        rejects("uplink_backend = \"xdp\"", "uplink_backend", "xdp");
        rejects("xdp_superframe_socket = 1", "xdp_superframe_socket", "1");
        rejects("state_dir = \"var/lib\"", "state_dir", "var/lib");
        rejects("api_socket = \"s.sock\"", "api_socket", "s.sock");
        rejects(
            "metrics_listen = \"localhost\"",
            "metrics_listen",
            "localhost",
        );
        rejects(
            "vtep_mac = \"02:00:00:00:00\"",
            "vtep_mac",
            "02:00:00:00:00",
        );
        rejects(
            "vtep_mac = \"01:00:5e:00:00:01\"",
            "vtep_mac",
            "01:00:5e:00:00:01",
        );
        rejects("host_port = \"yes\"", "host_port", "yes");
        rejects(
            "host_ifname = \"a-very-long-interface\"",
            "host_ifname",
            "a-very-long-interface",
        );
        rejects("host_ifname = \"eth0\"", "host_ifname", "eth0");
        rejects("conntrack_size = 10", "conntrack_size", "10");
        rejects("busy_poll_us = -1", "busy_poll_us", "-1");
        rejects("busy_poll_us = 2000000", "busy_poll_us", "2000000");
        rejects("idle_cpu_poll_us = -5", "idle_cpu_poll_us", "-5");
        rejects("yield_on_delivery = \"yes\"", "yield_on_delivery", "yes");
        rejects("worker_nice = -21", "worker_nice", "-21");
        rejects("worker_nice = 20", "worker_nice", "20");
        rejects("worker_nice = \"high\"", "worker_nice", "high");
        rejects("tap_queue_len = 63", "tap_queue_len", "63");
        rejects("tap_queue_len = 65537", "tap_queue_len", "65537");
        rejects("log_level = \"loud\"", "log_level", "loud");
        rejects("log_level = \"info,=debug\"", "log_level", "info,=debug");
        rejects("datastore = \"consul\"", "datastore", "consul");
        rejects(
            "etcd_endpoints = [\"https://e:2379\"]",
            "etcd_endpoints",
            "set",
        );
        rejects("etcd_ca = \"/ca.pem\"", "etcd_ca", "set");
        rejects("block_size = 31", "block_size", "31");
        rejects("block_size = 15", "block_size", "15");
        rejects("node_grace_period_s = 0", "node_grace_period_s", "0");
        rejects("node_grace_period_s = -5", "node_grace_period_s", "-5");
        rejects("node_lease_ttl_s = 1", "node_lease_ttl_s", "1");
        rejects("node_lease_ttl_s = 3601", "node_lease_ttl_s", "3601");
        let e = rejects("vni = 0", "vni", "0");
        match e {
            ConfigError::InvalidConfig {
                key,
                value,
                expected,
            } => {
                assert_eq!(key, "vni");
                assert_eq!(value, "0");
                assert_eq!(expected, "an integer 1..=16777215");
            }
            other => panic!("{other:?}"),
        }
        let e = Config::parse(&BASE.replace("node-1", "Node_1")).unwrap_err();
        assert!(e.to_string().contains("node_name") && e.to_string().contains("Node_1"));
        let e = Config::parse(&BASE.replace("eth0", "eth/0")).unwrap_err();
        assert!(e.to_string().contains("uplink") && e.to_string().contains("eth/0"));
    }

    #[test]
    fn cidr_values() {
        let e = Config::parse(&BASE.replace("198.19.1.0/24", "198.19.1.1/24")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("pod_cidr") && msg.contains("198.19.1.1/24"),
            "{msg}"
        );
        assert!(msg.contains("did you mean 198.19.1.0/24"), "{msg}");
        let e = Config::parse(&BASE.replace("198.19.1.0/24", "198.19.1.0")).unwrap_err();
        assert!(e.to_string().contains("pod_cidr"), "{e}");
        let e = Config::parse(&BASE.replace("198.19.1.0/24", "198.20.1.0/24")).unwrap_err();
        assert!(
            e.to_string().contains("inside cluster_cidr 198.19.0.0/16"),
            "{e}"
        );
        let e = Config::parse(&BASE.replace("198.19.0.0/16", "198.19.0.0/40")).unwrap_err();
        assert!(e.to_string().contains("cluster_cidr"), "{e}");
        let e = Config::parse(
            &BASE
                .replace("198.19.0.0/16", "169.254.0.0/16")
                .replace("198.19.1.0/24", "169.254.1.0/24"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("link-local"), "{e}");
        // A block larger than the cluster range.
        let e = Config::parse(&format!(
            "{}block_size = 18\n",
            BASE.replace("198.19.0.0/16", "198.19.0.0/20")
        ))
        .unwrap_err();
        assert!(e.to_string().contains("block_size"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = with("vnii = 3").unwrap_err();
        match &e {
            ConfigError::UnknownKey { key, line, .. } => {
                assert_eq!(key, "vnii");
                assert_eq!(*line, 5);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("vnii"));
        let e = with("[[peers]]\nname = \"n2\"\nnode_ip = \"198.18.0.2\"\npod_cidr = \"198.19.2.0/24\"\nnmae = 1")
            .unwrap_err();
        match &e {
            ConfigError::UnknownKey { key, line, .. } => {
                assert_eq!(key, "peers[0].nmae");
                assert_eq!(*line, 9);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = with("vni = ").unwrap_err();
        match e {
            ConfigError::Syntax { line, .. } => assert_eq!(line, 5),
            other => panic!("{other:?}"),
        }
        let e = with("vni = 1\nvni = 2").unwrap_err();
        match e {
            ConfigError::Syntax { line, .. } => assert_eq!(line, 6),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_keys() {
        let e = Config::parse("cluster_cidr = \"198.19.0.0/16\"\npod_cidr = \"198.19.1.0/24\"\n")
            .unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingKey { key, .. } if key == "uplink"),
            "{e:?}"
        );
        let e = Config::parse("uplink = \"eth0\"\npod_cidr = \"198.19.1.0/24\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingKey { key, .. } if key == "cluster_cidr"),
            "{e:?}"
        );
        let e = Config::parse("uplink = \"eth0\"\ncluster_cidr = \"198.19.0.0/16\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingKey { key, .. } if key == "pod_cidr"),
            "{e:?}"
        );
        let e = with("[[peers]]\nname = \"n2\"\npod_cidr = \"198.19.2.0/24\"").unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingKey { key, .. } if key == "peers[0].node_ip"),
            "{e:?}"
        );
        // etcd: pod_cidr optional, endpoints required.
        let etcd = "uplink = \"eth0\"\ncluster_cidr = \"198.19.0.0/16\"\ndatastore = \"etcd\"\n";
        let e = Config::parse(etcd).unwrap_err();
        assert!(
            matches!(&e, ConfigError::MissingKey { key, .. } if key == "etcd_endpoints"),
            "{e:?}"
        );
        let c = Config::parse(&format!(
            "{etcd}etcd_endpoints = [\"http://198.18.0.10:2379\"]\n"
        ))
        .unwrap();
        assert_eq!(c.pod_cidr, None);
        let e =
            Config::parse(&format!("{etcd}etcd_endpoints = [\"198.18.0.10:2379\"]\n")).unwrap_err();
        assert!(e.to_string().contains("etcd_endpoints[0]"), "{e}");
        let e = Config::parse(&format!(
            "{etcd}etcd_endpoints = [\"http://198.18.0.10:2379\"]\netcd_cert = \"/c.pem\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("etcd_cert"), "{e}");
    }

    #[test]
    fn peer_rules() {
        let peer = |name: &str, ip: &str, cidr: &str| {
            format!("[[peers]]\nname = \"{name}\"\nnode_ip = \"{ip}\"\npod_cidr = \"{cidr}\"\n")
        };
        let ok = format!(
            "{}{}",
            peer("node-2", "198.18.0.2", "198.19.2.0/24"),
            peer("node-3", "198.18.0.3", "198.19.3.0/24")
        );
        assert_eq!(with(&ok).unwrap().peers.len(), 2);
        let cases = [
            (
                peer("node-2", "198.18.0.2", "198.20.2.0/24"),
                "peers[0].pod_cidr",
                "198.20.2.0/24",
            ),
            (
                peer("node-2", "198.18.0.2", "198.19.1.128/25"),
                "peers[0].pod_cidr",
                "198.19.1.128/25",
            ),
            (
                peer("node-2", "198.18.0.2", "198.19.0.0/23"),
                "peers[0].pod_cidr",
                "198.19.0.0/23",
            ),
            (
                peer("node-1", "198.18.0.2", "198.19.2.0/24"),
                "peers[0].name",
                "node-1",
            ),
            (
                peer("node-2", "198.19.9.9", "198.19.2.0/24"),
                "peers[0].node_ip",
                "198.19.9.9",
            ),
            (
                peer("node-2", "224.0.0.1", "198.19.2.0/24"),
                "peers[0].node_ip",
                "224.0.0.1",
            ),
            (
                peer("node-2", "198.18.0.2", "198.19.2.1/24"),
                "peers[0].pod_cidr",
                "198.19.2.1/24",
            ),
            (
                format!(
                    "{}{}",
                    peer("node-2", "198.18.0.2", "198.19.2.0/24"),
                    peer("node-2", "198.18.0.3", "198.19.3.0/24")
                ),
                "peers[1].name",
                "node-2",
            ),
            (
                format!(
                    "{}{}",
                    peer("node-2", "198.18.0.2", "198.19.2.0/24"),
                    peer("node-3", "198.18.0.2", "198.19.3.0/24")
                ),
                "peers[1].node_ip",
                "198.18.0.2",
            ),
            (
                format!(
                    "{}{}",
                    peer("node-2", "198.18.0.2", "198.19.2.0/24"),
                    peer("node-3", "198.18.0.3", "198.19.2.0/25")
                ),
                "peers[1].pod_cidr",
                "198.19.2.0/25",
            ),
        ];
        for (extra, key, value) in &cases {
            rejects(extra, key, value);
        }
        rejects(
            &format!(
                "node_ip = \"198.18.0.2\"\n{}",
                peer("node-2", "198.18.0.2", "198.19.2.0/24")
            ),
            "peers[0].node_ip",
            "198.18.0.2",
        );
        rejects(
            &format!(
                "{}vtep_mac = \"ff:ff:ff:ff:ff:ff\"\n",
                peer("node-2", "198.18.0.2", "198.19.2.0/24")
            ),
            "peers[0].vtep_mac",
            "ff:ff:ff:ff:ff:ff",
        );
    }

    #[test]
    fn resolve_fills_host_defaults() {
        let c = with(
            "[[peers]]\nname = \"node-2\"\nnode_ip = \"198.18.0.2\"\npod_cidr = \"198.19.2.0/24\"",
        )
        .unwrap();
        let r = c.resolve(&facts()).unwrap();
        assert_eq!(r.node_ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(r.pod_mtu, 1450);
        assert_eq!(r.uplink_mtu, 1500);
        assert_eq!(r.vtep_mac.to_string(), "02:53:c6:12:00:01");
        assert_eq!(r.peers[0].vtep_mac.to_string(), "02:53:c6:12:00:02");
        assert_eq!(r.datastore, DatastoreConfig::File);
        assert_eq!(r.node_grace_period, Duration::from_secs(3600));
        let p = r.node_params();
        assert_eq!(p.mode, Mode::Vxlan);
        assert_eq!(p.node_ip, r.node_ip);
        assert_eq!(p.uplink_mac, facts().mac);
        assert_eq!(p.pod_mtu, 1450);
        assert_eq!(p.vtep_mac, r.vtep_mac);
        assert_eq!((p.vni, p.vxlan_port), (4096, 4789));
        assert!(p.accept_vxlan && !p.accept_ipip);

        // Each mode's overhead; a configured MTU and node address win.
        for (mode, mtu) in [("ipip", 1480), ("native", 1500)] {
            let r = with(&format!("mode = \"{mode}\""))
                .unwrap()
                .resolve(&facts())
                .unwrap();
            assert_eq!(r.pod_mtu, mtu);
        }
        let r =
            with("mtu = 1400\nnode_ip = \"198.18.5.5\"\nvni = 9\nvtep_mac = \"02:01:02:03:04:05\"")
                .unwrap()
                .resolve(&facts())
                .unwrap();
        assert_eq!((r.pod_mtu, r.node_ip), (1400, Ipv4Addr::new(198, 18, 5, 5)));
        assert_eq!(r.node_params().vni, 9);
        assert_eq!(r.node_params().vtep_mac.to_string(), "02:01:02:03:04:05");
    }

    #[test]
    fn resolve_checks_host_rules() {
        // MTU over the uplink's minus the overhead.
        let e = with("mtu = 1451").unwrap().resolve(&facts()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("mtu") && msg.contains("1451") && msg.contains("at most 1450"),
            "{msg}"
        );
        assert!(with("mtu = 1450").unwrap().resolve(&facts()).is_ok());
        // An uplink too small to leave a usable pod MTU.
        let small = UplinkFacts {
            mtu: 600,
            ..facts()
        };
        let e = with("").unwrap().resolve(&small).unwrap_err();
        assert!(e.to_string().contains("mtu"), "{e}");
        // No address on the uplink and none configured.
        let bare = UplinkFacts {
            ipv4: vec![],
            ..facts()
        };
        let e = with("").unwrap().resolve(&bare).unwrap_err();
        assert!(
            e.to_string().contains("node_ip") && e.to_string().contains("eth0"),
            "{e}"
        );
        // The uplink's address inside the cluster range.
        let inside = UplinkFacts {
            ipv4: vec![Ipv4Addr::new(198, 19, 200, 1)],
            ..facts()
        };
        let e = with("").unwrap().resolve(&inside).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("node_ip") && msg.contains("198.19.200.1"),
            "{msg}"
        );
        // A peer with this node's resolved address.
        let c = with(
            "[[peers]]\nname = \"node-2\"\nnode_ip = \"198.18.0.1\"\npod_cidr = \"198.19.2.0/24\"",
        )
        .unwrap();
        let e = c.resolve(&facts()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("peers[0].node_ip") && msg.contains("198.18.0.1"),
            "{msg}"
        );
        // resolve re-checks fields changed after parsing.
        let mut c = with("").unwrap();
        c.pod_cidr = Some("198.20.0.0/24".parse().unwrap());
        assert!(c
            .resolve(&facts())
            .unwrap_err()
            .to_string()
            .contains("pod_cidr"));
        let mut c = with("").unwrap();
        c.vni = 0;
        c.validate().unwrap(); // ranges are checked when parsing, not here
        let mut c = with("").unwrap();
        c.node_ip = Some(Ipv4Addr::new(198, 19, 1, 1));
        assert!(c
            .resolve(&facts())
            .unwrap_err()
            .to_string()
            .contains("node_ip"));
    }

    #[test]
    fn etcd_resolves() {
        let c = Config::parse(
            "uplink = \"eth0\"\ncluster_cidr = \"198.19.0.0/16\"\nnode_name = \"n\"\n\
             datastore = \"etcd\"\netcd_endpoints = [\"https://198.18.0.10:2379\"]\n\
             etcd_ca = \"/ca.pem\"\n",
        )
        .unwrap();
        let r = c.resolve(&facts()).unwrap();
        assert_eq!(r.pod_cidr, None);
        match r.datastore {
            DatastoreConfig::Etcd(e) => {
                assert_eq!(e.endpoints, ["https://198.18.0.10:2379"]);
                assert_eq!(e.ca.as_deref(), Some(Path::new("/ca.pem")));
                assert_eq!(e.cert, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.uplink, "eth0");
        assert_eq!(c.pod_cidr, Some("198.19.1.0/24".parse().unwrap()));
        assert!(c.resolve(&facts()).is_ok());
    }

    /// Every key is in the example, and every commented-out `key = value` line there parses
    /// and, for keys with a fixed default, shows that default.
    #[test]
    fn example_documents_every_key_and_default() {
        let base = Config::parse(BASE).unwrap();
        let mut full = base.clone();
        full.node_ip = Some(Ipv4Addr::new(198, 18, 0, 1));
        full.mtu = Some(1400);
        full.vtep_mac = Some(MacAddr([2, 0, 0, 0, 0, 1]));
        full.etcd_endpoints = vec!["https://e".into()];
        full.etcd_ca = Some("/a".into());
        full.etcd_cert = Some("/b".into());
        full.etcd_key = Some("/c".into());
        full.peers = vec![Peer {
            name: "x".into(),
            node_ip: Ipv4Addr::new(198, 18, 0, 2),
            pod_cidr: "198.19.2.0/24".parse().unwrap(),
            vtep_mac: None,
        }];
        let keys = toml::Table::try_from(&full).unwrap();
        let (top, peers) = EXAMPLE.split_once("# [[peers]]\n").unwrap();
        for key in keys.keys() {
            let documented = EXAMPLE.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("[[{key}]]"))
            });
            assert!(documented, "{key} is not in EXAMPLE");
        }
        let no_fixed_default = ["node_name", "node_ip", "mtu", "vtep_mac"];
        let mut seen = 0;
        for line in top.lines() {
            let Some(setting) = line.strip_prefix("# ") else {
                continue;
            };
            let Some((key, _)) = setting.split_once(" = ") else {
                continue;
            };
            if !keys.contains_key(key) {
                continue;
            }
            seen += 1;
            // BASE without the key being tried.
            let base_text: String = BASE
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} = ")))
                .map(|l| format!("{l}\n"))
                .collect();
            let text = if key.starts_with("etcd_") {
                let mut t = format!("{base_text}datastore = \"etcd\"\n{setting}\n");
                if key != "etcd_endpoints" {
                    t.push_str("etcd_endpoints = [\"https://198.18.0.10:2379\"]\n");
                }
                if key == "etcd_cert" {
                    t.push_str("etcd_key = \"/k.pem\"\n");
                }
                if key == "etcd_key" {
                    t.push_str("etcd_cert = \"/c.pem\"\n");
                }
                t
            } else {
                format!("{base_text}{setting}\n")
            };
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{setting}: {e}"));
            if !no_fixed_default.contains(&key) && !key.starts_with("etcd_") && key != "datastore" {
                assert_eq!(c, base, "{setting} is not the default");
            }
        }
        assert!(seen >= 20, "only {seen} documented settings found");
        let uncommented: String = peers
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&format!("{top}[[peers]]\n{uncommented}\n")).unwrap();
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].name, "node-2");
    }

    #[test]
    fn load_reads_files() {
        let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluiced.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(
            Config::load(&path).unwrap(),
            Config::parse(EXAMPLE).unwrap()
        );
        let missing = dir.join("absent.toml");
        match Config::load(&missing).unwrap_err() {
            ConfigError::Io { path, .. } => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, " ".repeat(MAX_FILE as usize + 1)).unwrap();
        assert!(matches!(Config::load(&path), Err(ConfigError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = Config::parse(&s);
        }

        #[test]
        fn arbitrary_values_never_panic(key in "[a-z_]{1,20}", value in "[-0-9a-z.:/\"\\[\\]]{0,30}") {
            let _ = Config::parse(&format!("{BASE}{key} = {value}\n"));
        }
    }
}
