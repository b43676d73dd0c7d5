// Temporary measurement (removed after use): shared conntrack lock cost.
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use sluice_dataplane::buf::{Batch, Pool, DEFAULT_BUF_SIZE};
use sluice_dataplane::pipeline::{Pipeline, TxQueues};
use sluice_dataplane::policy::conntrack::{SharedTable, DEFAULT_SHARDS};
use sluice_dataplane::policy::enforcer::Config;
use sluice_dataplane::policy::{
    AllowAll, EndpointPolicy, NetPolicy, PeerRule, Policy, PolicyTablesBuilder, PortSet, RuleSet,
};
use sluice_dataplane::table::{Mode, Prefix, TableHandle, Tables, GATEWAY_MAC};
use sluice_dataplane::testkit::*;

const BATCH: usize = 32;

struct Case<P: Policy> {
    pl: Pipeline<P>,
    pool: Pool,
    tx: TxQueues,
    frames: Vec<Vec<u8>>,
    b: Batch,
}

impl<P: Policy> Case<P> {
    fn new(h: &TableHandle, p: P, base: u16) -> Case<P> {
        let frames = (0..BATCH)
            .map(|i| udp_frame(POD_A1_MAC, GATEWAY_MAC, POD_A1, POD_B1, base + i as u16, 5201, 64))
            .collect();
        let mut c = Case {
            pl: Pipeline::new(h, p),
            pool: Pool::new(1024, DEFAULT_BUF_SIZE),
            tx: TxQueues::with_ports(16),
            frames,
            b: Batch::new(),
        };
        assert_eq!(c.run(0), BATCH);
        c
    }
    fn run(&mut self, now: u64) -> usize {
        for f in &self.frames {
            let mut p = self.pool.alloc().unwrap();
            p.load(f);
            self.b.push(p);
        }
        self.pl.process(POD_A1_PORT, &mut self.b, now, &mut self.pool, &mut self.tx);
        let n = black_box(self.tx.len());
        self.tx.clear(&mut self.pool);
        n
    }
}

fn ns(mut f: impl FnMut() -> usize, batches: usize) -> f64 {
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..batches {
        n += f();
    }
    t.elapsed().as_nanos() as f64 / n.max(1) as f64
}

fn main() {
    let open = node_a(Mode::Vxlan, 0, 0);
    let iso = node_a(Mode::Vxlan, 0, 0);
    let mut b = PolicyTablesBuilder::new();
    let all = b.add_rule_set(Arc::new(RuleSet::new(&[PeerRule {
        cidr: Prefix::new(Ipv4Addr::UNSPECIFIED, 0).unwrap(),
        except: vec![],
        ports: PortSet::all(),
    }])));
    let none = b.add_rule_set(Arc::new(RuleSet::default()));
    b.endpoint(POD_A1, EndpointPolicy { ingress: Some(none), egress: Some(all) }).unwrap();
    iso.update(|t| Tables { policy: Arc::new(b.build()), ..t.clone() });
    let cfg = Config::default();
    let shared = Arc::new(SharedTable::new(cfg.conntrack, DEFAULT_SHARDS));
    let mut a = Case::new(&open, AllowAll, 40000);
    let mut own = Case::new(&iso, NetPolicy::new(cfg), 40000);
    let mut sh = Case::new(&iso, NetPolicy::with_shared(cfg, shared.clone()), 40000);
    let (mut va, mut vo, mut vs) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..40 {
        va = va.min(ns(|| a.run(1), 2000));
        vo = vo.min(ns(|| own.run(1), 2000));
        vs = vs.min(ns(|| sh.run(1), 2000));
    }
    eprintln!("one thread: allow-all {va:.1}, own table {vo:.1}, shared {vs:.1} ns/packet; shared - own {:.1}", vs - vo);
    // Two threads over the one shared table, different flows each.
    let iso2 = iso.clone();
    let s2 = shared.clone();
    let t = std::thread::spawn(move || {
        let mut c = Case::new(&iso2, NetPolicy::with_shared(cfg, s2), 50000);
        let mut m = f64::MAX;
        for _ in 0..40 {
            m = m.min(ns(|| c.run(1), 2000));
        }
        m
    });
    let mut m = f64::MAX;
    for _ in 0..40 {
        m = m.min(ns(|| sh.run(1), 2000));
    }
    let m2 = t.join().unwrap();
    eprintln!("two threads, shared table: {m:.1} / {m2:.1} ns/packet each");
}
