//! Runs one pipeline case in a tight loop, for profilers (perf, callgrind):
//! `cargo run --release -p bench --example pipeline_loop -- vxlan_encap 1000000`
//! prints instructions-independent timing; under callgrind, divide the
//! instruction count of `Pipeline::process` by batches × 32.

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
                .map(|i| udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, POD_B1, 40000 + i, 5201, 64))
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
    println!(
        "{case}: {ns:.1} ns/packet over {batches} batches; drops {}",
        pl.counters().total_drops()
    );
}
