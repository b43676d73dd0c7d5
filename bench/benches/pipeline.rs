//! Criterion benches for the fast path.
//!
//! Group `pipeline`: one iteration = one batch received on a port, loaded into
//! pool buffers (the copy a port does), run through the whole pipeline, and the
//! transmit queues given back to the pool. Tables hold 10k routes and 1k
//! endpoints. Throughput is in packets, so criterion reports time per batch and
//! packets per second; BENCHMARKS.md gives ns per packet = time / batch size.
//!
//! Group `stage`: the pieces on their own (LPM lookup, endpoint lookup, outer
//! header write, checksum, flow hash).
//!
//! Group `superframe`: what a node does in user space with a 64 KB TCP
//! superframe: cut into segments for a kernel VXLAN peer (each segment's
//! headers and checksums), and on receive a VXLAN UDP superframe either cut
//! into datagrams or made one TCP superframe again in place.
//!
//! Group `pipeline_cpu`: the six budget cases of `pipeline` timed in thread
//! CPU time rather than wall time, for numbers that mean something while
//! other work shares the machine's cores.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::flow::FlowKey;
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::port::gro::Udp4Split;
use sluice_dataplane::port::gso::Tcp4Gso;
use sluice_dataplane::table::{default_vtep_mac, Mode, TunnelId};
use sluice_dataplane::testkit::*;
use sluice_dataplane::wire::{checksum, ipv4};

const ROUTES: usize = 10_000;
const ENDPOINTS: usize = 1_000;

/// `n` frames of `len` bytes for a case, with varying source ports (distinct flows).
fn frames(case: &str, len: usize, n: usize) -> (PortId, Vec<Vec<u8>>) {
    let mut out = Vec::with_capacity(n);
    let (port, mode_inner) = match case {
        "vxlan_encap" | "ipip_encap" | "native_out" => (POD_A1_PORT, false),
        _ => (PortId::UPLINK, true),
    };
    for i in 0..n {
        let sport = 40000 + i as u16;
        if !mode_inner {
            // Spread over the remote routes, not just one destination.
            let dst = if i % 2 == 0 {
                POD_B1
            } else {
                Ipv4Addr::from(0xc614_0000 + ((i as u32 * 97) % (ROUTES as u32 * 64)))
            };
            out.push(udp_frame(
                POD_A1_MAC,
                sluice_dataplane::table::GATEWAY_MAC,
                POD_A1,
                dst,
                sport,
                5201,
                len,
            ));
            continue;
        }
        let inner_len = match case {
            "vxlan_decap" => len - 50,
            "ipip_decap" => len - 20,
            _ => len,
        };
        let mut inner = udp_frame(
            NODE_B_VTEP,
            default_vtep_mac(NODE_A),
            POD_B1,
            POD_A1,
            sport,
            5201,
            inner_len,
        );
        out.push(match case {
            "vxlan_decap" => vxlan_from_b(&inner, 4096, NODE_B),
            "ipip_decap" => ipip_from_b(&inner[14..], NODE_B),
            _ => {
                inner[0..6].copy_from_slice(&NODE_A_MAC.0);
                inner[6..12].copy_from_slice(&NODE_B_MAC.0);
                inner
            }
        });
    }
    (port, out)
}

fn mode_of(case: &str) -> Mode {
    match case {
        "vxlan_encap" | "vxlan_decap" => Mode::Vxlan,
        "ipip_encap" | "ipip_decap" => Mode::Ipip,
        _ => Mode::Native,
    }
}

const CASES: [&str; 6] = [
    "vxlan_encap",
    "vxlan_decap",
    "ipip_encap",
    "ipip_decap",
    "native_out",
    "native_in",
];

/// Thread CPU time instead of wall time: on a machine whose cores other
/// work shares, wall time counts the time the bench thread waited for a core;
/// CPU time counts only what the pipeline spent (cache and sibling-thread
/// effects remain). Values are nanoseconds, formatted as wall time is.
struct ThreadCpu;

impl ThreadCpu {
    fn now() -> u64 {
        use nix::time::{clock_gettime, ClockId};
        clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
    }
}

static WALL: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        ThreadCpu::now()
    }
    fn end(&self, start: u64) -> u64 {
        ThreadCpu::now().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

fn bench_case<M: Measurement>(
    c: &mut criterion::BenchmarkGroup<'_, M>,
    id: String,
    case: &str,
    len: usize,
    batch: usize,
) {
    let tables = node_a(mode_of(case), ROUTES, ENDPOINTS);
    let mut pl = Pipeline::allow_all(&tables);
    let mut pool = Pool::new(1024, DEFAULT_BUF_SIZE);
    let mut tx = TxQueues::with_ports(16);
    let (port, frames) = frames(case, len, batch);
    let mut b = Batch::new();
    // Every frame must be forwarded, not dropped: a bench of drops would lie.
    for f in &frames {
        let mut p = pool.alloc().unwrap();
        p.load(f);
        b.push(p);
    }
    pl.process(port, &mut b, 0, &mut pool, &mut tx);
    assert_eq!(tx.len(), batch, "{case}: {:?}", pl.counters());
    tx.clear(&mut pool);

    c.throughput(Throughput::Elements(batch as u64));
    c.bench_function(id, |bench| {
        bench.iter(|| {
            for f in &frames {
                let mut p = pool.alloc().unwrap();
                p.load(f);
                b.push(p);
            }
            pl.process(port, &mut b, 0, &mut pool, &mut tx);
            black_box(tx.len());
            tx.clear(&mut pool);
        })
    });
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    for case in CASES {
        bench_case(
            &mut g,
            case.to_string(),
            case,
            64.max(if case.contains("vxlan_decap") {
                114
            } else if case.contains("ipip_decap") {
                84
            } else {
                64
            }),
            32,
        );
    }
    for case in CASES {
        bench_case(&mut g, format!("{case}_1400"), case, 1400, 32);
    }
    for case in CASES {
        bench_case(
            &mut g,
            format!("{case}_b256"),
            case,
            64.max(if case.contains("vxlan_decap") {
                114
            } else if case.contains("ipip_decap") {
                84
            } else {
                64
            }),
            256,
        );
    }
    g.finish();
}

/// The six budget cases again, timed in thread CPU time (see [`ThreadCpu`]).
fn pipeline_cpu(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("pipeline_cpu");
    for case in CASES {
        let len = match case {
            "vxlan_decap" => 114,
            "ipip_decap" => 84,
            _ => 64,
        };
        bench_case(&mut g, case.to_string(), case, len, 32);
    }
    g.finish();
}

fn stage(c: &mut Criterion) {
    let mut g = c.benchmark_group("stage");
    let tables = node_a(Mode::Vxlan, ROUTES, ENDPOINTS);
    let t = tables.load();
    let addrs: Vec<u32> = (0..1024u32)
        .map(|i| 0xc614_0000 + i.wrapping_mul(2_654_435_761) % (ROUTES as u32 * 64))
        .collect();
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function(BenchmarkId::new("lpm_lookup", ROUTES), |b| {
        b.iter(|| {
            addrs
                .iter()
                .map(|&a| u32::from(t.routes.lookup(a).is_some()))
                .sum::<u32>()
        })
    });
    let eps: Vec<u32> = (0..1024u32)
        .map(|i| u32::from(POD_A1) + (i % 200))
        .collect();
    g.bench_function(BenchmarkId::new("endpoint_lookup", ENDPOINTS), |b| {
        b.iter(|| {
            eps.iter()
                .map(|&a| t.endpoints.by_ip(a).unwrap_or(0))
                .sum::<u32>()
        })
    });
    g.throughput(Throughput::Elements(1));
    let tun = t.tunnels.get(TunnelId(0)).unwrap();
    let mut out = [0u8; 64];
    g.bench_function("vxlan_write_outer", |b| {
        b.iter(|| {
            tun.write_outer(
                &mut out[..50],
                black_box(114),
                black_box(7),
                black_box(40000),
            );
            black_box(&out);
        })
    });
    let f = from_pod_a1(POD_B1, 64);
    g.bench_function("ipv4_verify_checksum", |b| {
        b.iter(|| checksum::sum(black_box(&f[14..34])) == 0xffff)
    });
    // The payload sums of segmentation and of verifying a joined superframe:
    // one MSS-sized segment and a whole 64 KB superframe.
    let data: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for len in [1448, 65_536] {
        g.throughput(criterion::Throughput::Bytes(len as u64));
        g.bench_function(format!("checksum_sum_{len}"), |b| {
            b.iter(|| checksum::sum(black_box(&data[..len])))
        });
    }
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("ipv4_ttl_decrement", |b| {
        let mut f = f.clone();
        b.iter(|| {
            let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
            ip.set_ttl(64);
            ip.decrement_ttl();
        })
    });
    g.bench_function("flow_key_and_hash", |b| {
        b.iter(|| FlowKey::from_ipv4(black_box(&f[14..])).hash())
    });
    g.finish();
}

/// An Ethernet/IPv4/TCP superframe of `payload` bytes, its TCP checksum
/// partial (pseudo header only), as a pod's TAP hands it over.
fn tcp_superframe(payload: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + 32 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&POD_A1.octets());
    ip[16..20].copy_from_slice(&POD_B1.octets());
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 32];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&502u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i * 7 + 3) as u8));
    f
}

fn superframe(c: &mut Criterion) {
    const MSS: u16 = 1398;
    let mut g = c.benchmark_group("superframe");
    let sf = tcp_superframe(64_000);
    let tcp = Tcp4Gso::parse(&sf, MSS).unwrap();
    let mut seg = vec![0u8; tcp.max_segment_len()];
    g.throughput(Throughput::Bytes(64_000));
    g.bench_function("tcp_cut_46_segments", |b| {
        b.iter(|| {
            for i in 0..tcp.count() {
                black_box(tcp.write_segment(&sf, i, &mut seg).unwrap());
            }
        })
    });
    // The same segments as VXLAN pieces of one UDP superframe.
    let mut udp = vec![2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa, 0x08, 0x00];
    udp.extend_from_slice(&[0x45, 0, 0, 0, 0x40, 0, 0, 0, 64, 17, 0, 0]);
    udp.extend_from_slice(&NODE_B.octets());
    udp.extend_from_slice(&NODE_A.octets());
    udp.extend_from_slice(&[0xc3, 0x50, 0x12, 0xb5, 0, 0, 0, 0]);
    let mut piece = 0;
    for i in 0..tcp.count() {
        let n = tcp.write_segment(&sf, i, &mut seg).unwrap();
        udp.extend_from_slice(&[0x08, 0, 0, 0, 0, 0x10, 0, 0]);
        udp.extend_from_slice(&seg[..n]);
        piece = piece.max(8 + n);
    }
    let piece = piece as u16;
    // Each datagram into a buffer of its own, as the port cuts into pool buffers.
    let mut outs = vec![vec![0u8; 2048]; tcp.count()];
    g.bench_function("vxlan_rx_cut_46_datagrams", |b| {
        b.iter(|| {
            let split = Udp4Split::parse(&udp, piece, 2048).unwrap();
            for (i, out) in outs.iter_mut().enumerate().take(split.count()) {
                black_box(split.write(&udp, i, out));
            }
        })
    });
    for (name, csum_ok) in [
        ("vxlan_rx_join_46_pieces", true),
        ("vxlan_rx_join_46_pieces_verified", false),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || udp.clone(),
                |f| {
                    let split = Udp4Split::parse(f, piece, usize::MAX).unwrap();
                    black_box(split.join_vxlan_tcp(f, 4789, csum_ok).unwrap())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline, stage, superframe);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = pipeline_cpu
}
criterion_main!(benches, cpu);
