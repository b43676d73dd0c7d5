//! The whole pipeline over the test kit's node A (two local pods, peer B, a
//! host port) in each mode: arbitrary frames arrive on the uplink, the pod
//! ports, the host port and a pod port with no endpoint. Nothing may panic and
//! every buffer must come back to the pool.
//!
//! Input: byte 0 picks the mode, then records of `[port][len_hi][len_lo][frame]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::table::Mode;
use sluice_dataplane::testkit::{node_a, POD_A1_PORT, POD_A2_PORT};

const PORTS: [PortId; 5] = [
    PortId::UPLINK,
    POD_A1_PORT,
    POD_A2_PORT,
    PortId::HOST,
    PortId(9), // a pod port no endpoint holds
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mode = match mode % 3 {
        0 => Mode::Vxlan,
        1 => Mode::Ipip,
        _ => Mode::Native,
    };
    let tables = node_a(mode, 2, 3);
    let mut pl = Pipeline::allow_all(&tables);
    let mut pool = Pool::new(64, DEFAULT_BUF_SIZE);
    let mut tx = TxQueues::default();
    let total = pool.available();
    let mut now = 0u64;
    while let [port, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        let port = PORTS[usize::from(*port) % PORTS.len()];
        let mut b = Batch::new();
        // Several copies in one batch exercise the per-batch lookup cache.
        for _ in 0..3 {
            let Some(mut p) = pool.alloc() else { break };
            if p.load(frame) {
                b.push(p);
            } else {
                pool.free(p);
            }
        }
        now += 1_000_000;
        pl.process(port, &mut b, now, &mut pool, &mut tx);
        assert!(b.is_empty(), "the pipeline consumes its input batch");
        for (_, q) in tx.pending() {
            for p in q.iter() {
                assert!(p.data().len() <= DEFAULT_BUF_SIZE);
            }
        }
        tx.clear(&mut pool);
        let _ = pl.take_events().count();
        assert_eq!(pool.available(), total, "a packet buffer leaked");
    }
});
