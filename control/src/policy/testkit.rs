//! Test harness: a small cluster split over two nodes, each with its own
//! compiler, tables and [`NetPolicy`]; reachability is decided by pushing
//! packets through the compiled dataplane (egress on the source's node,
//! ingress on the destination's), never by a separate evaluator.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use sluice_dataplane::buf::{Meta, Packet, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::drop::DropReason;
use sluice_dataplane::flow::FlowKey;
use sluice_dataplane::policy::conntrack::tcp_flags::{ACK, SYN};
use sluice_dataplane::policy::{NetPolicy, Policy, Protocol, Verdict};
use sluice_dataplane::table::{Endpoint, EndpointTable, Mode, NodeParams, Owner, Tables};
use sluice_dataplane::testkit::udp_frame;
use sluice_dataplane::wire::MacAddr;

use super::{Compiler, PodKey, PolicyKey, Target};

/// A pod of the test cluster.
#[derive(Debug, Clone)]
pub struct TestPod {
    pub key: PodKey,
    pub ip: Ipv4Addr,
    pub node: usize,
    pub labels: Value,
    /// Extra container ports, JSON as in a Pod spec.
    pub ports: Vec<Value>,
}

impl TestPod {
    pub fn object(&self) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": self.key.name, "namespace": self.key.namespace,
                         "labels": self.labels, "uid": format!("{}-{}", self.key, self.ip)},
            "spec": {"containers": [{"name": "c", "ports": self.ports}]},
            "status": {"podIP": self.ip.to_string(), "phase": "Running"}
        }))
        .expect("test pod")
    }

    fn mac(&self) -> MacAddr {
        let o = self.ip.octets();
        MacAddr([2, 0, o[0], o[1], o[2], o[3]])
    }
}

pub fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}}))
    .expect("test namespace")
}

pub fn netpol(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .expect("test policy")
}

/// One kind of probe: a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Probe, String> {
        let (p, proto) = s.split_once('/').ok_or(s.to_owned())?;
        Ok(Probe {
            port: p.parse().map_err(|_| s.to_owned())?,
            protocol: proto.parse().map_err(|_| s.to_owned())?,
        })
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// The cluster and the two nodes' control planes.
pub struct World {
    pub pods: Vec<TestPod>,
    pub compilers: [Compiler; 2],
    probes_run: u16,
}

const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];

impl World {
    pub fn new(namespaces: &[Namespace], pods: Vec<TestPod>) -> World {
        let mut w = World {
            pods,
            compilers: [Compiler::new(), Compiler::new()],
            probes_run: 0,
        };
        for (n, c) in w.compilers.iter_mut().enumerate() {
            for ns in namespaces {
                c.upsert_namespace(ns).expect("namespace");
            }
            for p in &w.pods {
                c.upsert_pod(&p.object()).expect("pod");
            }
            c.set_local_endpoints(
                w.pods
                    .iter()
                    .filter(|p| p.node == n)
                    .map(|p| (p.key.clone(), p.ip)),
            );
        }
        w
    }

    /// Applies (creates or replaces) a policy on both nodes.
    pub fn apply(&mut self, np: &NetworkPolicy) {
        for c in &mut self.compilers {
            c.upsert_policy(np).expect("policy");
        }
    }

    /// Applies an AdminNetworkPolicy named `name` with this spec on both nodes.
    pub fn apply_admin(&mut self, name: &str, spec: Value) {
        let anp: super::admin::AdminNetworkPolicy = serde_json::from_value(json!({
            "apiVersion": super::admin::API_VERSION, "kind": super::admin::KIND,
            "metadata": {"name": name}, "spec": spec}))
        .expect("test admin policy");
        for c in &mut self.compilers {
            c.upsert_admin_policy(&anp).expect("admin policy");
        }
    }

    pub fn delete_admin(&mut self, name: &str) {
        for c in &mut self.compilers {
            c.remove_admin_policy(name);
        }
    }

    pub fn delete(&mut self, ns: &str, name: &str) {
        for c in &mut self.compilers {
            c.remove_policy(&PolicyKey::new(ns, name));
        }
    }

    pub fn relabel_pod(&mut self, key: &str, labels: Value) {
        let key: PodKey = key.parse().expect("pod key");
        let i = self.index(&key);
        self.pods[i].labels = labels;
        let obj = self.pods[i].object();
        for c in &mut self.compilers {
            c.upsert_pod(&obj).expect("pod");
        }
    }

    pub fn upsert_namespace(&mut self, ns: &Namespace) {
        for c in &mut self.compilers {
            c.upsert_namespace(ns).expect("namespace");
        }
    }

    fn index(&self, key: &PodKey) -> usize {
        self.pods
            .iter()
            .position(|p| p.key == *key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    /// Each node's tables: its local pods as endpoints, its compiled policy.
    pub fn tables(&mut self) -> [Tables; 2] {
        let mut out = Vec::new();
        for (n, node_ip) in NODE_IPS.into_iter().enumerate() {
            let mut t = Tables::new(NodeParams::new(
                Mode::Vxlan,
                node_ip,
                MacAddr([2, 0, 0, 0, 0, n as u8 + 1]),
                1500,
            ));
            let eps: Vec<Endpoint> = self
                .pods
                .iter()
                .enumerate()
                .filter(|(_, p)| p.node == n)
                .map(|(i, p)| Endpoint {
                    ip: p.ip,
                    mac: p.mac(),
                    port: PortId(2 + i as u16),
                    owner: Owner {
                        namespace: p.key.namespace.as_str().into(),
                        name: p.key.name.as_str().into(),
                        container_id: "".into(),
                    },
                })
                .collect();
            t.endpoints = Arc::new(EndpointTable::new(eps).expect("endpoints"));
            t.policy = self.compilers[n].build();
            out.push(t);
        }
        let [a, b]: [Tables; 2] = out.try_into().expect("two nodes");
        [a, b]
    }

    /// Whether a new connection `from -> to` gets through both nodes'
    /// dataplanes; when it does, checks that its reply does too.
    pub fn reachable(
        &mut self,
        t: &[Tables; 2],
        np: &mut [NetPolicy; 2],
        from: usize,
        to: usize,
        probe: Probe,
    ) -> Result<(), DropReason> {
        self.probes_run = self.probes_run.wrapping_add(1);
        let (s, d) = (&self.pods[from], &self.pods[to]);
        let key = FlowKey {
            src: u32::from(s.ip),
            dst: u32::from(d.ip),
            sport: 10_000 + self.probes_run % 50_000,
            dport: probe.port,
            proto: probe.protocol.number(),
        };
        let through = |np: &mut [NetPolicy; 2], key: FlowKey, a: &TestPod, b: &TestPod, flags| {
            let (ea, eb) = (ep_index(&t[a.node], a.ip), ep_index(&t[b.node], b.ip));
            let mut pkt = packet(key, flags);
            pkt.meta.in_port = PortId(2);
            pkt.meta.src_ep = ea;
            if let Verdict::Deny(r) = np[a.node].egress(&t[a.node], &pkt, 1) {
                return Err(r);
            }
            if a.node != b.node {
                pkt.meta.src_ep = Meta::NO_EP;
                pkt.meta.in_port = PortId::UPLINK;
            }
            pkt.meta.dst_ep = eb;
            match np[b.node].ingress(&t[b.node], &pkt, 1) {
                Verdict::Deny(r) => Err(r),
                Verdict::Allow => Ok(()),
            }
        };
        let tcp = probe.protocol == Protocol::Tcp;
        through(np, key, s, d, if tcp { SYN } else { 0 })?;
        let reply = through(np, key.reversed(), d, s, if tcp { SYN | ACK } else { 0 });
        assert_eq!(
            reply,
            Ok(()),
            "reply of allowed {} -> {} {probe} refused",
            s.key,
            d.key
        );
        Ok(())
    }

    /// The full matrix for one probe (rows: from, columns: to), checked
    /// against `explain` cell by cell.
    pub fn matrix(&mut self, probe: Probe) -> Vec<Vec<bool>> {
        let t = self.tables();
        let mut np = [NetPolicy::default(), NetPolicy::default()];
        let n = self.pods.len();
        let mut m = vec![vec![false; n]; n];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, cell) in row.iter_mut().enumerate() {
                *cell = self.reachable(&t, &mut np, i, j, probe).is_ok();
                let e = self.compilers[0].explain(
                    &Target::Pod(self.pods[i].key.clone()),
                    &Target::Pod(self.pods[j].key.clone()),
                    probe.port,
                    probe.protocol,
                );
                assert_eq!(
                    e.allowed, *cell,
                    "explain disagrees with the dataplane:\n{e}"
                );
            }
        }
        m
    }

    /// Asserts the matrix of every probe in `probes` (`"80/TCP"`) against a
    /// truth table: one row per source pod, `NS/POD` then one `X` (allowed)
    /// or `.` (denied) per destination pod in pod order, spaces ignored.
    #[track_caller]
    pub fn expect(&mut self, probes: &[&str], table: &str) {
        let want = self.parse(table);
        for p in probes {
            let probe: Probe = p.parse().expect("probe");
            let got = self.matrix(probe);
            if got != want {
                panic!(
                    "{probe}: reachability differs\nwant:\n{}\ngot:\n{}",
                    self.render(&want),
                    self.render(&got)
                );
            }
        }
    }

    fn parse(&self, table: &str) -> Vec<Vec<bool>> {
        let rows: Vec<&str> = table
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(rows.len(), self.pods.len(), "one row per pod");
        rows.iter()
            .zip(&self.pods)
            .map(|(row, pod)| {
                let (label, cells) = row.split_once(' ').expect("label and cells");
                assert_eq!(label, pod.key.to_string(), "rows in pod order");
                let cells: Vec<bool> = cells
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .map(|c| match c {
                        'X' => true,
                        '.' => false,
                        other => panic!("cell {other:?}: expected X or ."),
                    })
                    .collect();
                assert_eq!(cells.len(), self.pods.len(), "row {label}");
                cells
            })
            .collect()
    }

    fn render(&self, m: &[Vec<bool>]) -> String {
        let mut s = String::new();
        for (row, pod) in m.iter().zip(&self.pods) {
            s.push_str(&format!("{} ", pod.key));
            for (j, c) in row.iter().enumerate() {
                if j > 0 && j % 3 == 0 {
                    s.push(' ');
                }
                s.push(if *c { 'X' } else { '.' });
            }
            s.push('\n');
        }
        s
    }
}

fn ep_index(t: &Tables, ip: Ipv4Addr) -> u32 {
    t.endpoints.by_ip(u32::from(ip)).unwrap_or(Meta::NO_EP)
}

/// A packet with `key` in its metadata and a frame whose TCP flags (when TCP)
/// are `flags`.
pub fn packet(key: FlowKey, flags: u8) -> Packet {
    let mut f = udp_frame(
        MacAddr([2, 0, 0, 0, 0, 1]),
        MacAddr([2, 0, 0, 0, 0, 2]),
        key.src_addr(),
        key.dst_addr(),
        key.sport,
        key.dport,
        64,
    );
    f[23] = key.proto;
    if key.proto == 6 {
        f[14 + 20 + 13] = flags;
    }
    let mut p = Packet::with_capacity(DEFAULT_BUF_SIZE);
    assert!(p.load(&f));
    p.meta.flow = key;
    p.meta.l3 = 14;
    p.meta.src_ep = Meta::NO_EP;
    p.meta.dst_ep = Meta::NO_EP;
    p
}
