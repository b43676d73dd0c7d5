//! Runs one pipeline case in a tight loop, for profilers (perf, callgrind):
//! `cargo run --release -p bench --example pipeline_loop -- vxlan_encap 1000000 [spread]`
//! prints wall and on-CPU time per packet (the latter holds up on a loaded
//! machine); under callgrind, subtract a run of 0 batches (the set-up) and
//! divide by batches × 32 for instructions per packet.

use std::net::Ipv4Addr;
use std::time::Instant;

use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::table::{default_vtep_mac, Mode, GATEWAY_MAC};
use sluice_dataplane::testkit::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "vxlan_encap".into());
    let batches: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let spread = args.next().as_deref() == Some("spread");
    let mode = match case.as_str() {
        "vxlan_encap" | "vxlan_decap" => Mode::Vxlan,
        "ipip_encap" | "ipip_decap" => Mode::Ipip,
        _ => Mode::Native,
    };
    let tables = node_a(mode, 10_000, 1_000);
    let mut pl = Pipeline::allow_all(&tables);
    let mut pool = Pool::new(1024, DEFAULT_BUF_SIZE);
    let mut tx = TxQueues::with_ports(16);
    let (port, frames): (PortId, Vec<Vec<u8>>) = match case.as_str() {
        "vxlan_encap" | "ipip_encap" | "native_out" => (
            POD_A1_PORT,
            (0..32u16)
                .map(|i| {
                    // `spread`: every other packet to another remote /26, as
                    // the criterion bench sends them.
                    let dst = if spread && i % 2 == 1 {
                        Ipv4Addr::from(0xc614_0000 + (u32::from(i) * 97) % (10_000 * 64))
                    } else {
                        POD_B1
                    };
                    udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, dst, 40000 + i, 5201, 64)
                })
                .collect(),
        ),
        _ => (
            PortId::UPLINK,
            (0..32u16)
                .map(|i| {
                    let inner = udp_frame(
                        NODE_B_VTEP,
                        default_vtep_mac(NODE_A),
                        POD_B1,
                        POD_A1,
                        40000 + i,
                        5201,
                        64,
                    );
                    match case.as_str() {
                        "vxlan_decap" => vxlan_from_b(&inner, 4096, NODE_B),
                        "ipip_decap" => ipip_from_b(&inner[14..], NODE_B),
                        _ => {
                            let mut f = inner;
                            f[0..6].copy_from_slice(&NODE_A_MAC.0);
                            f
                        }
                    }
                })
                .collect(),
        ),
    };
    let mut b = Batch::new();
    let cpu0 = thread_cpu_ns();
    let t = Instant::now();
    for _ in 0..batches {
        for f in &frames {
            let mut p = pool.alloc().expect("buffer");
            p.load(f);
            b.push(p);
        }
        pl.process(port, &mut b, 0, &mut pool, &mut tx);
        tx.clear(&mut pool);
    }
    let ns = t.elapsed().as_nanos() as f64 / (batches as f64 * 32.0);
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) => format!("{:.1}", (b - a) as f64 / (batches as f64 * 32.0)),
        _ => "?".to_owned(),
    };
    println!(
        "{case}: {ns:.1} ns/packet wall, {cpu} ns/packet on the CPU, over {batches} batches; drops {}",
        pl.counters().total_drops()
    );
}

/// Nanoseconds this thread has spent running (Linux schedstat): unlike wall
/// time, it leaves out the time other processes held the CPU, so it stays
/// meaningful on a loaded machine.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
