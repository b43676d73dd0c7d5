//! Criterion benches for NetworkPolicy.
//!
//! Group `policy`:
//! * `classify/N`: one new-flow classification (peer interval search plus
//!   port check) in a rule set compiled from N rules (10 .. 100k: 90% pod
//!   `/32`s, 10% CIDRs of /16../28 with an exception, over 198.16.0.0/12);
//!   throughput in lookups. Memory per rule set is printed at set-up.
//! * `new_flow/100000`: `NetPolicy::egress` on packets of new flows, 100k
//!   rules: classification plus the connection-table insert.
//! * `conntrack_hit/F`: lookup and state update of an established flow (the
//!   enforcer's fast path, `Table::hit`) in a table holding F flows.
//! * `pipeline/vxlan_encap_*`: the `pipeline` bench's `vxlan_encap` case
//!   (batch of 32 64-byte frames, 10k routes, 1k endpoints), with the
//!   allow-all policy and with `NetPolicy` on established flows (the sender
//!   isolated in both directions, so every packet goes through the
//!   connection table); time per batch, ns per packet = time / 32.
//!
//! Group `policy_compile`: compiling 10k NetworkPolicies over 1k pods (10
//! namespaces), every pod local, from scratch to a `PolicyTables`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sluice_control::policy::{Compiler, PodKey};
use sluice_dataplane::buf::{Batch, Meta, Packet, Pool, DEFAULT_BUF_SIZE};
use sluice_dataplane::flow::FlowKey;
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::policy::conntrack::{self, Tag};
use sluice_dataplane::policy::enforcer::Config;
use sluice_dataplane::policy::{
    EndpointPolicy, NetPolicy, PeerRule, Policy, PolicyTablesBuilder, PortRange, PortSet, Protocol,
    RuleSet, Verdict,
};
use sluice_dataplane::table::{Mode, Prefix, Tables, GATEWAY_MAC};
use sluice_dataplane::testkit::*;

const ROUTES: usize = 10_000;
const ENDPOINTS: usize = 1_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }

    /// An address in 198.16.0.0/12.
    fn addr(&mut self) -> u32 {
        0xc610_0000 | (self.next() & 0x000f_ffff)
    }
}

fn rules(n: usize, seed: u64) -> Vec<PeerRule> {
    let mut r = Rng(seed);
    (0..n)
        .map(|i| {
            let ports = match r.next() % 4 {
                0 => PortSet::of(Protocol::Udp, [PortRange::one(53)]),
                1 => PortSet::of(
                    Protocol::Tcp,
                    [PortRange {
                        start: 8000,
                        end: 8100,
                    }],
                ),
                _ => PortSet::of(Protocol::Tcp, [PortRange::one(80 + (r.next() % 64) as u16)]),
            };
            let (cidr, except) = if i % 10 == 0 {
                let len = 16 + (r.next() % 13) as u8;
                let cidr = Prefix::new(Ipv4Addr::from(r.addr()), len).unwrap();
                let e = Prefix::new(cidr.nth(u64::from(r.next())), len + 2).unwrap();
                (cidr, vec![e])
            } else {
                (Prefix::host(Ipv4Addr::from(r.addr())), vec![])
            };
            PeerRule {
                cidr,
                except,
                ports,
            }
        })
        .collect()
}

/// Probe addresses: half of them rule addresses (hits), half random.
fn probes(rules: &[PeerRule], n: usize) -> Vec<u32> {
    let mut r = Rng(99);
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                rules[r.next() as usize % rules.len()].cidr.addr_u32()
            } else {
                r.addr()
            }
        })
        .collect()
}

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let list = rules(n, 7);
        let t0 = std::time::Instant::now();
        let rs = RuleSet::new(&list);
        eprintln!(
            "policy: {n} rules -> {} intervals, {} classes, depth {}, {} bytes, compiled in {:?}",
            rs.intervals(),
            rs.classes(),
            rs.depth(),
            rs.memory(),
            t0.elapsed()
        );
        let peers = probes(&list, 4096);
        let lookups = || {
            let hits: u32 = peers
                .iter()
                .map(|&p| u32::from(rs.allows(black_box(p), 6, 80)))
                .sum();
            black_box(hits);
            peers.len()
        };
        eprintln!(
            "policy: classify/{n}: minimum {:.1} ns/lookup",
            min_ns(lookups)
        );
        g.throughput(Throughput::Elements(peers.len() as u64));
        g.bench_function(BenchmarkId::new("classify", n), |b| {
            b.iter(|| {
                peers
                    .iter()
                    .map(|&p| u32::from(rs.allows(black_box(p), 6, 80)))
                    .sum::<u32>()
            })
        });
    }

    // New flows through the enforcer: classification and connection insert.
    let list = rules(100_000, 7);
    let rs = Arc::new(RuleSet::new(&list));
    let peers = probes(&list, 4096);
    let mut b = PolicyTablesBuilder::new();
    let id = b.add_rule_set(rs);
    b.endpoint(
        POD_A1,
        EndpointPolicy {
            ingress: None,
            egress: Some(id),
        },
    )
    .unwrap();
    let handle = node_a(Mode::Vxlan, 0, 0);
    handle.update(|t| Tables {
        policy: Arc::new(b.build()),
        ..t.clone()
    });
    let tables = handle.load();
    let a1 = tables.endpoints.by_ip(u32::from(POD_A1)).unwrap();
    let pkts: Vec<Packet> = peers
        .iter()
        .enumerate()
        .map(|(i, &dst)| {
            let mut p = Packet::with_capacity(256);
            p.meta.flow = FlowKey {
                src: u32::from(POD_A1),
                dst,
                sport: i as u16,
                dport: 53,
                proto: 17,
            };
            p.meta.src_ep = a1;
            p.meta.dst_ep = Meta::NO_EP;
            p
        })
        .collect();
    g.throughput(Throughput::Elements(pkts.len() as u64));
    g.bench_function(BenchmarkId::new("new_flow", 100_000), |b| {
        b.iter_batched_ref(
            || {
                NetPolicy::new(Config {
                    conntrack: conntrack::Config {
                        capacity: 8192,
                        ..Default::default()
                    },
                    ..Default::default()
                })
            },
            |np| {
                pkts.iter()
                    .filter(|p| np.egress(&tables, p, 0) == Verdict::Allow)
                    .count()
            },
            BatchSize::LargeInput,
        )
    });

    // Conntrack hits: a table whose live flows fit in the caches, and one
    // of 64k flows (about 3 MiB of index and entries: most lookups miss L2).
    for flows in [1024usize, 65_536] {
        let mut ct = conntrack::Table::new(conntrack::Config::default());
        let mut r = Rng(5);
        let keys: Vec<FlowKey> = (0..flows)
            .map(|_| FlowKey {
                src: r.addr(),
                dst: r.addr(),
                sport: r.next() as u16,
                dport: 443,
                proto: 17,
            })
            .collect();
        for k in &keys {
            ct.insert(k, 0, 0, Tag::default()).unwrap();
        }
        let hits: Vec<FlowKey> = (0..4096)
            .map(|i| {
                let k = keys[r.next() as usize % keys.len()];
                if i % 2 == 0 {
                    k
                } else {
                    k.reversed()
                }
            })
            .collect();
        eprintln!(
            "policy: conntrack_hit/{flows}: minimum {:.1} ns/hit",
            min_ns(|| {
                hits.iter()
                    .filter(|k| matches!(ct.hit(black_box(k), 0, 1, 0), conntrack::Hit::Tracked(_)))
                    .count()
            })
        );
        g.throughput(Throughput::Elements(hits.len() as u64));
        g.bench_function(BenchmarkId::new("conntrack_hit", flows), |b| {
            b.iter(|| {
                let mut n = 0u32;
                for k in &hits {
                    if let conntrack::Hit::Tracked(_) = ct.hit(black_box(k), 0, 1, 0) {
                        n += 1;
                    }
                }
                n
            })
        });
    }
    g.finish();
}

/// The `pipeline` bench's `vxlan_encap` case, with a given policy.
struct Case<P: Policy> {
    pl: Pipeline<P>,
    pool: Pool,
    tx: TxQueues,
    frames: Vec<Vec<u8>>,
    b: Batch,
}

const BATCH: usize = 32;

impl<P: Policy> Case<P> {
    fn new(handle: &sluice_dataplane::table::TableHandle, policy: P) -> Case<P> {
        let frames: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| {
                let dst = if i % 2 == 0 {
                    POD_B1
                } else {
                    Ipv4Addr::from(0xc614_0000 + ((i as u32 * 97) % (ROUTES as u32 * 64)))
                };
                udp_frame(
                    POD_A1_MAC,
                    GATEWAY_MAC,
                    POD_A1,
                    dst,
                    40000 + i as u16,
                    5201,
                    64,
                )
            })
            .collect();
        let mut c = Case {
            pl: Pipeline::new(handle, policy),
            pool: Pool::new(1024, DEFAULT_BUF_SIZE),
            tx: TxQueues::with_ports(16),
            frames,
            b: Batch::new(),
        };
        // The first batch opens the flows; every frame must be forwarded.
        assert_eq!(c.run(0), BATCH, "{:?}", c.pl.counters());
        c
    }

    #[inline]
    fn run(&mut self, now: u64) -> usize {
        for f in &self.frames {
            let mut p = self.pool.alloc().unwrap();
            p.load(f);
            self.b.push(p);
        }
        self.pl
            .process(POD_A1_PORT, &mut self.b, now, &mut self.pool, &mut self.tx);
        let n = black_box(self.tx.len());
        self.tx.clear(&mut self.pool);
        n
    }
}

/// The fastest of 30 timings of `f`, in nanoseconds per element (`f`
/// returns how many it handled): what the code costs when nothing else runs
/// on this shared, noisy host.
fn min_ns(mut f: impl FnMut() -> usize) -> f64 {
    (0..30)
        .map(|_| {
            let t = std::time::Instant::now();
            let n = f();
            t.elapsed().as_nanos() as f64 / n.max(1) as f64
        })
        .fold(f64::MAX, f64::min)
}

/// Nanoseconds per packet of `batches` runs of `f`.
fn ns_per_packet(mut f: impl FnMut() -> usize, batches: usize) -> f64 {
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..batches {
        n += f();
    }
    t.elapsed().as_nanos() as f64 / n.max(1) as f64
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    let open = node_a(Mode::Vxlan, ROUTES, ENDPOINTS);
    let isolated = node_a(Mode::Vxlan, ROUTES, ENDPOINTS);
    let mut b = PolicyTablesBuilder::new();
    let all = b.add_rule_set(Arc::new(RuleSet::new(&[PeerRule {
        cidr: Prefix::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(),
        except: vec![],
        ports: PortSet::all(),
    }])));
    let none = b.add_rule_set(Arc::new(RuleSet::default()));
    b.endpoint(
        POD_A1,
        EndpointPolicy {
            ingress: Some(none),
            egress: Some(all),
        },
    )
    .unwrap();
    isolated.update(|t| Tables {
        policy: Arc::new(b.build()),
        ..t.clone()
    });
    let mut allow = Case::new(&open, sluice_dataplane::policy::AllowAll);
    let mut netpol = Case::new(&isolated, NetPolicy::default());
    assert_eq!(netpol.pl.policy.conntrack().len(), BATCH);

    // Interleaved, so that both see the same machine (shared build hosts
    // are noisy): the minimum over rounds of each, and their difference.
    let (mut a, mut n) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        a.push(ns_per_packet(|| allow.run(1), 2000));
        n.push(ns_per_packet(|| netpol.run(1), 2000));
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    eprintln!(
        "policy: vxlan_encap interleaved minimum: allow-all {:.1} ns/packet, \
         NetPolicy established {:.1} ns/packet, difference {:.1} ns/packet",
        min(&a),
        min(&n),
        min(&n) - min(&a)
    );

    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("pipeline/vxlan_encap_allow_all", |bench| {
        bench.iter(|| allow.run(1))
    });
    g.bench_function("pipeline/vxlan_encap_netpolicy_established", |bench| {
        bench.iter(|| netpol.run(1))
    });
    g.finish();
}

/// Namespaces, pods, policies and local endpoints of a cluster.
struct Cluster {
    nss: Vec<k8s_openapi::api::core::v1::Namespace>,
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
    pols: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>,
    local: Vec<(PodKey, Ipv4Addr)>,
}

/// 10 namespaces, 1k pods, 10k policies, all pods local.
fn cluster() -> Cluster {
    let nss = (0..10)
        .map(|i| {
            serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": format!("ns{i}"), "labels": {"team": format!("t{}", i % 3)}}}))
            .unwrap()
        })
        .collect();
    let mut local = Vec::new();
    let pods = (0..1000u32)
        .map(|i| {
            let ip = Ipv4Addr::from(0xc613_0000 + (i / 250) * 256 + i % 250 + 1);
            local.push((PodKey::new(format!("ns{}", i % 10), format!("p{i}")), ip));
            let tier = ["web", "api", "db"][i as usize % 3];
            serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 10),
                    "labels": {"app": format!("a{}", i % 50), "tier": tier}},
                "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]},
                "status": {"podIP": ip.to_string(), "phase": "Running"}}))
            .unwrap()
        })
        .collect();
    let pols = (0..10_000u32)
        .map(|j| {
            let mut spec = serde_json::json!({
                "podSelector": {"matchLabels": {"app": format!("a{}", (j / 10) % 50)}},
                "ingress": [{"from": [
                        {"podSelector": {"matchLabels": {"app": format!("a{}", (j * 7) % 50)}}},
                        {"namespaceSelector": {"matchLabels": {"team": format!("t{}", j % 3)}},
                         "podSelector": {"matchLabels": {"tier": "web"}}}],
                    "ports": [{"port": 8000 + j % 100}, {"port": "http"}]}]});
            if j % 5 == 0 {
                spec["egress"] = serde_json::json!([{"to": [{"ipBlock": {
                    "cidr": format!("10.{}.0.0/16", j % 256),
                    "except": [format!("10.{}.1.0/24", j % 256)]}}],
                    "ports": [{"port": 443}]}]);
            }
            serde_json::from_value(serde_json::json!({"apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": format!("np{j}"), "namespace": format!("ns{}", j % 10)},
                "spec": spec}))
            .unwrap()
        })
        .collect();
    Cluster {
        nss,
        pods,
        pols,
        local,
    }
}

fn compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_compile");
    g.sample_size(10);
    let Cluster {
        nss,
        pods,
        pols,
        local,
    } = cluster();
    let run = || {
        let mut comp = Compiler::new();
        for n in &nss {
            comp.upsert_namespace(n).unwrap();
        }
        for p in &pods {
            comp.upsert_pod(p).unwrap();
        }
        for p in &pols {
            comp.upsert_policy(p).unwrap();
        }
        comp.set_local_endpoints(local.iter().cloned());
        (comp.build(), comp)
    };
    let (t, comp) = run();
    eprintln!(
        "policy_compile: {} endpoints, {} rule sets ({} compiled), {} bytes",
        t.endpoints().count(),
        t.rule_sets().len(),
        comp.stats().rule_sets_compiled,
        t.memory()
    );
    g.bench_function("10k_policies_1k_pods", |b| b.iter(|| black_box(run().0)));
    g.finish();
}

criterion_group!(benches, classify, pipeline, compile);
criterion_main!(benches);
