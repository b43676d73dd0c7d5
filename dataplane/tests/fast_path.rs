//! The fused fast path (an untraced batch runs each packet from its input
//! stage on to its output stage in one pass) against the stage-by-stage path
//! (a traced batch runs every stage on its own): for any frames, the same
//! bytes leave by the same ports and every counter ends the same.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::table::{default_vtep_mac, Mode, TableHandle, GATEWAY_MAC};
use sluice_dataplane::testkit::*;
use sluice_dataplane::trace::{Filter, MAX_TRACE};

struct Side {
    pl: Pipeline,
    pool: Pool,
    tx: TxQueues,
}

impl Side {
    fn new(tables: &TableHandle, traced: bool) -> Side {
        let mut pl = Pipeline::allow_all(tables);
        if traced {
            // The empty filter marks every frame, so every batch takes the
            // stage-by-stage path.
            pl.set_trace(Filter::default(), MAX_TRACE, u64::MAX);
        }
        Side {
            pl,
            pool: Pool::new(512, DEFAULT_BUF_SIZE),
            tx: TxQueues::default(),
        }
    }

    fn run(&mut self, port: PortId, frames: &[Vec<u8>]) -> Vec<(PortId, Vec<u8>)> {
        let mut b = Batch::new();
        for f in frames {
            let mut p = self.pool.alloc().unwrap();
            assert!(p.load(f));
            b.push(p);
        }
        self.pl
            .process(port, &mut b, 0, &mut self.pool, &mut self.tx);
        let mut out = Vec::new();
        for (port, q) in self.tx.pending() {
            for p in q.iter() {
                out.push((port, p.data().to_vec()));
            }
        }
        self.tx.clear(&mut self.pool);
        out
    }
}

/// Runs `frames` through both paths and compares everything observable.
fn same_either_way(mode: Mode, port: PortId, frames: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let tables = node_a(mode, 64, 8);
    let mut fused = Side::new(&tables, false);
    let mut staged = Side::new(&tables, true);
    // Twice: the second batch starts from the state the first left (IPv4 IDs).
    for _ in 0..2 {
        let a = fused.run(port, frames);
        let b = staged.run(port, frames);
        prop_assert_eq!(a, b);
        prop_assert_eq!(fused.pl.counters(), staged.pl.counters());
    }
    prop_assert!(staged.pl.tracing() || frames.is_empty());
    Ok(())
}

/// Valid frames of every kind a port sees, to mutate.
fn seeds(mode: Mode) -> Vec<(PortId, Vec<u8>)> {
    let inner = udp_frame(
        NODE_B_VTEP,
        default_vtep_mac(NODE_A),
        POD_B1,
        POD_A1,
        5201,
        40000,
        120,
    );
    let mut native = inner.clone();
    native[0..6].copy_from_slice(&NODE_A_MAC.0);
    native[6..12].copy_from_slice(&NODE_B_MAC.0);
    let far = Ipv4Addr::new(198, 20, 0, 77);
    vec![
        (POD_A1_PORT, from_pod_a1(POD_B1, 100)),
        (POD_A1_PORT, from_pod_a1(far, 64)),
        (POD_A1_PORT, from_pod_a1(POD_A2, 90)),
        (POD_A1_PORT, from_pod_a1(Ipv4Addr::new(203, 0, 113, 9), 70)),
        (POD_A1_PORT, from_pod_a1(POD_B1, 1500)),
        (
            PortId::HOST,
            udp_frame(HOST_MAC, GATEWAY_MAC, NODE_A, POD_A1, 1, 2, 80),
        ),
        (
            PortId::UPLINK,
            match mode {
                Mode::Vxlan => vxlan_from_b(&inner, 4096, NODE_B),
                Mode::Ipip => ipip_from_b(&inner[14..], NODE_B),
                Mode::Native => native,
            },
        ),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Vxlan), Just(Mode::Ipip), Just(Mode::Native)]
}

#[test]
fn valid_frames_take_the_same_path() {
    for m in [Mode::Vxlan, Mode::Ipip, Mode::Native] {
        for (port, f) in seeds(m) {
            same_either_way(m, port, &[f.clone(), f]).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_frames_take_the_same_path(
        m in mode(),
        which in 0usize..7,
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
        cut in 0usize..1600,
        copies in 1usize..4,
    ) {
        let (port, mut f) = seeds(m).swap_remove(which);
        for (i, v) in edits {
            let i = i % f.len();
            f[i] = v;
        }
        f.truncate(cut.max(1));
        same_either_way(m, port, &vec![f; copies])?;
    }

    #[test]
    fn arbitrary_frames_take_the_same_path(
        m in mode(),
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..20),
        port in prop_oneof![Just(PortId::UPLINK), Just(PortId::HOST), Just(POD_A1_PORT), Just(PortId(9))],
    ) {
        same_either_way(m, port, &frames)?;
    }
}
