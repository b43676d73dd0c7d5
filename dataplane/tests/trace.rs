//! The packet trace through the in-memory pipeline: the marked packets get one
//! step per stage that handled them, unmarked ones none, and the trace
//! disarms itself once its count is reached.

use sluice_dataplane::buf::{Batch, Pool, PortId, DEFAULT_BUF_SIZE};
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::stage::Next;
use sluice_dataplane::table::{Mode, TableHandle};
use sluice_dataplane::testkit::*;
use sluice_dataplane::trace::{Filter, Traced};

struct Harness {
    _tables: TableHandle,
    pl: Pipeline,
    pool: Pool,
    tx: TxQueues,
}

impl Harness {
    fn new(mode: Mode) -> Harness {
        let tables = node_a(mode, 0, 0);
        let pl = Pipeline::allow_all(&tables);
        Harness {
            _tables: tables,
            pl,
            pool: Pool::new(512, DEFAULT_BUF_SIZE),
            tx: TxQueues::default(),
        }
    }

    fn run(&mut self, port: PortId, frames: &[Vec<u8>], now: u64) -> usize {
        let mut b = Batch::new();
        for f in frames {
            let mut p = self.pool.alloc().unwrap();
            assert!(p.load(f));
            b.push(p);
        }
        self.pl
            .process(port, &mut b, now, &mut self.pool, &mut self.tx);
        let sent = self.tx.len();
        self.tx.clear(&mut self.pool);
        sent
    }
}

fn stages(t: &Traced) -> Vec<(&'static str, &'static str)> {
    t.steps.iter().map(|s| (s.stage, s.next)).collect()
}

#[test]
fn next_numbers_round_trip() {
    for n in 0..=u8::MAX {
        if let Some(x) = Next::from_u8(n) {
            assert_eq!(x as u8, n);
        }
    }
    assert_eq!(Next::from_u8(Next::Tx as u8), Some(Next::Tx));
    assert_eq!(Next::from_u8(Next::Tx as u8 + 1), None);
}

#[test]
fn pod_to_remote_pod_shows_every_stage_in_each_mode() {
    for (mode, encap) in [
        (Mode::Vxlan, "vxlan-encap"),
        (Mode::Ipip, "ipip-encap"),
        (Mode::Native, "native-output"),
    ] {
        let mut h = Harness::new(mode);
        h.pl.set_trace(Filter::parse("dst 198.19.2.10 udp").unwrap(), 1, u64::MAX);
        // Two packets match; the count is one. A third goes elsewhere.
        let frames = vec![
            from_pod_a1(POD_A2, 64),
            from_pod_a1(POD_B1, 64),
            from_pod_a1(POD_B1, 64),
        ];
        assert_eq!(h.run(POD_A1_PORT, &frames, 1), 3);
        let traced = h.pl.take_traces();
        assert_eq!(traced.len(), 1, "{mode}: {traced:?}");
        let t = &traced[0];
        assert_eq!(t.in_port, POD_A1_PORT);
        assert_eq!(t.out_port, Some(PortId::UPLINK));
        assert_eq!(
            stages(t),
            [
                ("ethernet-input", "ipv4-input"),
                ("ipv4-input", "ipv4-lookup"),
                ("ipv4-lookup", encap),
                (encap, "tx"),
            ],
            "{mode}"
        );
        assert!(
            t.steps[2].detail.starts_with("route 198.19.2.0/24 via"),
            "{t}"
        );
        let out = &t.steps[3].detail;
        match mode {
            Mode::Vxlan => assert!(
                out.contains("udp") && out.contains("> 4789, vxlan vni"),
                "{out}"
            ),
            Mode::Ipip => assert!(
                out.contains("198.18.0.1 > 198.18.0.2") && out.contains("ipip"),
                "{out}"
            ),
            Mode::Native => assert!(out.contains("198.19.1.10 > 198.19.2.10"), "{out}"),
        }
        assert!(
            out.ends_with("out port uplink") || out.contains("out port"),
            "{out}"
        );
        // The count is reached: the trace disarmed itself.
        assert!(!h.pl.tracing(), "{mode}");
        assert_eq!(h.run(POD_A1_PORT, &frames, 2), 3);
        assert!(h.pl.take_traces().is_empty());
    }
}

#[test]
fn decap_and_drops_are_traced() {
    let mut h = Harness::new(Mode::Vxlan);
    h.pl.set_trace(Filter::default(), 3, u64::MAX);
    let inner = udp_frame(NODE_B_VTEP, POD_A1_MAC, POD_B1, POD_A1, 1000, 2000, 64);
    let good = vxlan_from_b(&inner, 4096, NODE_B);
    let wrong_vni = vxlan_from_b(&inner, 77, NODE_B);
    let stranger = vxlan_from_b(&inner, 4096, std::net::Ipv4Addr::new(198, 18, 9, 9));
    assert_eq!(h.run(PortId::UPLINK, &[good, wrong_vni, stranger], 5), 1);
    let traced = h.pl.take_traces();
    assert_eq!(traced.len(), 3);
    let first = &traced[0];
    // The inner flow is what the filter and the record see.
    assert_eq!(first.flow.map(|k| k.dst_addr()), Some(POD_A1));
    assert!(
        first.summary.contains("vxlan vni 4096"),
        "{}",
        first.summary
    );
    let names: Vec<_> = first.steps.iter().map(|s| s.stage).collect();
    assert_eq!(names.first(), Some(&"uplink-input"));
    assert_eq!(names.last(), Some(&"local-delivery"));
    assert_eq!(first.out_port, Some(POD_A1_PORT));
    for t in &traced[1..] {
        let last = t.steps.last().unwrap();
        assert_eq!(last.next, "drop", "{t}");
        assert!(last.detail.starts_with("drop: "), "{t}");
        assert_eq!(t.out_port, None);
    }
    assert_ne!(
        traced[1].steps.last().unwrap().drop,
        traced[2].steps.last().unwrap().drop
    );
}

#[test]
fn an_expired_trace_disarms_without_marking() {
    let mut h = Harness::new(Mode::Vxlan);
    h.pl.set_trace(Filter::default(), 10, 100);
    assert!(h.pl.tracing());
    assert_eq!(h.run(POD_A1_PORT, &[from_pod_a1(POD_B1, 64)], 200), 1);
    assert!(h.pl.take_traces().is_empty());
    assert!(!h.pl.tracing());
    // Disarming explicitly.
    h.pl.set_trace(Filter::default(), 10, u64::MAX);
    h.pl.set_trace(Filter::default(), 0, 0);
    assert!(!h.pl.tracing());
}

#[test]
fn a_port_filter_skips_other_ports() {
    let mut h = Harness::new(Mode::Vxlan);
    h.pl.set_trace(Filter::default().on_port(PortId::UPLINK), 5, u64::MAX);
    assert_eq!(h.run(POD_A1_PORT, &[from_pod_a1(POD_B1, 64)], 1), 1);
    assert!(h.pl.take_traces().is_empty());
    assert!(h.pl.tracing(), "still armed for the uplink");
    h.pl.set_trace(Filter::default().on_port(POD_A1_PORT), 5, u64::MAX);
    assert_eq!(h.run(POD_A1_PORT, &[from_pod_a1(POD_B1, 64)], 1), 1);
    assert_eq!(h.pl.take_traces().len(), 1);
}
