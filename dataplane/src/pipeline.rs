//! The pipeline: runs the stages over a batch in their fixed order, asks the
//! policy hook, and dispatches once at the end into per-port transmit queues.
//!
//! Call order, per received batch: [`Pipeline::process`], then the runtime
//! transmits and empties every queue in [`TxQueues`]. The pipeline reads the
//! tables once per batch and never blocks, allocates or does I/O.

use crate::buf::{Batch, Packet, Pool, PortId, MAX_BATCH};
use crate::drop::DropReason;
use crate::policy::{AllowAll, Policy, Verdict};
use crate::stage::{self, at, drop, goto, Counters, Next};
use crate::table::{TableHandle, TableReader, Tables};
use crate::trace::{Filter, Traced, Tracer};

/// Per-port transmit queues filled by dispatch.
#[derive(Debug, Default)]
pub struct TxQueues {
    queues: Vec<Batch>,
}

impl TxQueues {
    /// Queues for ports up to `ports - 1`, allocated now.
    pub fn with_ports(ports: usize) -> TxQueues {
        TxQueues {
            queues: (0..ports).map(|_| Batch::new()).collect(),
        }
    }

    /// The queue of `port`. Grows (allocating) only the first time a port with
    /// a higher number is seen.
    #[inline]
    pub fn queue(&mut self, port: PortId) -> &mut Batch {
        let i = port.index();
        if i >= self.queues.len() {
            self.queues.resize_with(i + 1, Batch::new);
        }
        &mut self.queues[i]
    }

    /// Every queue with packets waiting.
    pub fn pending(&mut self) -> impl Iterator<Item = (PortId, &mut Batch)> {
        self.queues
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, b)| (PortId(i as u16), b))
    }

    /// Gives every queued packet back to the pool (tests, benches, shutdown).
    pub fn clear(&mut self, pool: &mut Pool) {
        for q in &mut self.queues {
            pool.free_batch(q);
        }
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(Batch::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One worker's pipeline.
#[derive(Debug)]
pub struct Pipeline<P: Policy = AllowAll> {
    tables: TableReader,
    pub policy: P,
    counters: Counters,
    ident: u16,
    /// Drops recorded for `sluicectl monitor`; `None` (nothing recorded, one
    /// check on the drop path only) unless someone is watching.
    events: Option<Vec<DropEvent>>,
    /// The armed packet trace, if any (`sluicectl trace`).
    trace: Option<Box<Tracer>>,
}

/// A dropped packet, as recorded while monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropEvent {
    pub in_port: PortId,
    /// The 5-tuple, when ipv4-input got that far (zero otherwise).
    pub flow: crate::flow::FlowKey,
    pub reason: DropReason,
}

impl Pipeline<AllowAll> {
    /// A pipeline with no NetworkPolicy.
    pub fn allow_all(tables: &TableHandle) -> Self {
        Pipeline::new(tables, AllowAll)
    }
}

impl<P: Policy> Pipeline<P> {
    pub fn new(tables: &TableHandle, policy: P) -> Self {
        Pipeline {
            tables: tables.reader(),
            policy,
            counters: Counters::default(),
            ident: 0,
            events: None,
            trace: None,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The snapshot the next batch will use.
    pub fn tables(&mut self) -> &Tables {
        self.tables.current()
    }

    /// Forwards one batch received on `port`: every packet ends in a transmit
    /// queue of `tx` or back in `pool` with its drop reason counted. `batch` is
    /// left empty. `now` is monotonic nanoseconds.
    pub fn process(
        &mut self,
        port: PortId,
        batch: &mut Batch,
        now: u64,
        pool: &mut Pool,
        tx: &mut TxQueues,
    ) {
        #[cfg(not(sluice_no_observe))]
        if let Some(tracer) = self.trace.take() {
            return self.process_traced(tracer, port, batch, now, pool, tx);
        }
        self.run(port, batch, now, pool, tx, &mut Unobserved);
    }

    /// [`Pipeline::process`] with a trace armed: the matching packets are
    /// marked and each stage's decision for them recorded.
    #[cold]
    #[inline(never)]
    #[cfg_attr(sluice_no_observe, allow(dead_code))]
    fn process_traced(
        &mut self,
        mut tracer: Box<Tracer>,
        port: PortId,
        batch: &mut Batch,
        now: u64,
        pool: &mut Pool,
        tx: &mut TxQueues,
    ) {
        // Even with no packet marked, the traced instantiation runs: the fast
        // path's `run::<Unobserved>` keeps a single call site (in `process`),
        // so it is inlined exactly as in a build without the trace.
        tracer.start(batch.as_slice(), port, now);
        self.run(port, batch, now, pool, tx, &mut *tracer);
        if !tracer.finished(now) {
            self.trace = Some(tracer);
        }
    }

    /// Runs the stages; `obs` sees the batch before and after each stage that
    /// has packets (compiled away for [`Unobserved`]).
    #[inline(always)]
    fn run<O: Observe>(
        &mut self,
        port: PortId,
        batch: &mut Batch,
        now: u64,
        pool: &mut Pool,
        tx: &mut TxQueues,
        obs: &mut O,
    ) {
        let Pipeline {
            tables,
            policy,
            counters,
            ident,
            events,
            trace: _,
        } = self;
        let t: &Tables = tables.current();
        counters.batches += 1;
        counters.rx_packets += batch.len() as u64;
        let pkts = batch.as_mut_slice();
        let mut pending = stage::input::start(pkts, port);

        macro_rules! run {
            ($n:expr, $e:expr) => {
                if pending & $n.bit() != 0 {
                    if O::ON {
                        obs.before(pkts);
                    }
                    pending |= $e;
                    if O::ON {
                        obs.after($n, t, pkts);
                    }
                }
            };
        }
        // Untraced, the input stages do ipv4-input's work in the same pass
        // (uplink-input also ipv4-lookup's and the output stage's): one scan,
        // one parse, same decisions; the later stages then only see what is
        // left for them. A trace shows every stage on its own.
        run!(
            Next::UplinkInput,
            if O::ON {
                stage::input::uplink_input(t, counters, pkts)
            } else {
                stage::input::uplink_input_fused(t, counters, ident, pkts, P::ENFORCES)
            }
        );
        run!(
            Next::EthInput,
            if O::ON {
                stage::input::eth_input(t, counters, pkts)
            } else {
                stage::input::eth_input_fused(t, counters, pkts, P::ENFORCES)
            }
        );
        run!(Next::Arp, stage::input::arp(t, counters, pkts));
        run!(
            Next::Ipv4Input,
            stage::input::ipv4_input(t, counters, pkts, P::ENFORCES)
        );
        run!(Next::PolicyEgress, policy_stage(t, policy, now, pkts, true));
        run!(
            Next::Lookup,
            stage::lookup::lookup(t, counters, pkts, P::ENFORCES)
        );
        run!(
            Next::PolicyIngress,
            policy_stage(t, policy, now, pkts, false)
        );
        run!(
            Next::LocalDelivery,
            stage::encap::local_delivery(t, counters, pkts)
        );
        run!(
            Next::HostOutput,
            stage::encap::host_output(t, counters, pkts)
        );
        run!(
            Next::NativeOutput,
            stage::encap::native_output(t, counters, pkts)
        );
        run!(
            Next::VxlanEncap,
            stage::encap::vxlan_encap(t, counters, ident, pkts)
        );
        run!(
            Next::IpipEncap,
            stage::encap::ipip_encap(t, counters, ident, pkts)
        );
        run!(
            Next::IcmpError,
            stage::icmp_error::icmp_error(t, counters, pkts)
        );
        let _ = pending;
        if O::ON {
            obs.finish(pkts);
        }

        for p in batch.drain() {
            dispatch(p, counters, pool, tx, events.as_mut());
        }
    }

    /// Starts or stops recording drops for [`Pipeline::take_events`].
    pub fn set_monitor(&mut self, on: bool) {
        match (on, self.events.is_some()) {
            (true, false) => self.events = Some(Vec::with_capacity(MAX_BATCH)),
            (false, true) => self.events = None,
            _ => {}
        }
    }

    /// Arms a trace of the next `count` packets matching `filter`, until the
    /// monotonic time `deadline` (same clock as `now`); replaces any trace
    /// already armed. `count == 0` disarms.
    pub fn set_trace(&mut self, filter: Filter, count: u32, deadline: u64) {
        self.trace = (count > 0).then(|| Box::new(Tracer::new(filter, count, deadline)));
    }

    /// Whether a trace is armed or has records waiting.
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// The packets traced since the last call. The trace disarms itself once
    /// its count is reached or its deadline passed and its records are taken.
    pub fn take_traces(&mut self) -> Vec<Traced> {
        let Some(t) = &mut self.trace else {
            return Vec::new();
        };
        let out = t.take().collect();
        if t.exhausted() {
            self.trace = None;
        }
        out
    }

    /// Disarms a trace whose deadline passed while no packet came.
    pub fn expire_trace(&mut self, now: u64) {
        if self.trace.as_ref().is_some_and(|t| t.finished(now)) {
            self.trace = None;
        }
    }

    /// The drops recorded since the last call (at most one batch's worth).
    pub fn take_events(&mut self) -> impl Iterator<Item = DropEvent> + '_ {
        self.events.iter_mut().flat_map(|e| e.drain(..))
    }
}

#[inline(always)]
fn dispatch(
    mut p: Packet,
    counters: &mut Counters,
    pool: &mut Pool,
    tx: &mut TxQueues,
    events: Option<&mut Vec<DropEvent>>,
) {
    if at(&p, Next::Tx) {
        let q = tx.queue(p.meta.out_port);
        if q.is_full() {
            counters.drops[DropReason::TxQueueFull as usize] += 1;
            pool.free(p);
        } else {
            q.push(p);
        }
        return;
    }
    if !at(&p, Next::Drop) {
        // A stage left a packet without a decision: a bug, but never a silent one.
        debug_assert!(false, "packet left at stage {}", p.meta.next);
        p.meta.drop = DropReason::NoRoute;
    }
    counters.drops[p.meta.drop as usize] += 1;
    #[cfg(sluice_no_observe)]
    let _ = events;
    #[cfg(not(sluice_no_observe))]
    if let Some(ev) = events {
        if ev.len() < MAX_BATCH {
            ev.push(DropEvent {
                in_port: p.meta.in_port,
                flow: p.meta.flow,
                reason: p.meta.drop,
            });
        }
    }
    pool.free(p);
}

fn policy_stage<P: Policy>(
    t: &Tables,
    policy: &mut P,
    now: u64,
    pkts: &mut [Packet],
    egress: bool,
) -> u32 {
    let (here, next) = if egress {
        (Next::PolicyEgress, Next::Lookup)
    } else {
        (Next::PolicyIngress, Next::LocalDelivery)
    };
    let mut pending = 0;
    for p in pkts.iter_mut().filter(|p| at(p, here)) {
        let v = if egress {
            policy.egress(t, p, now)
        } else {
            policy.ingress(t, p, now)
        };
        pending |= match v {
            Verdict::Allow => goto(p, next),
            Verdict::Deny(r) => drop(p, r),
        };
    }
    pending
}

/// Sees the batch around each stage (the packet trace); see [`Pipeline::run`].
trait Observe {
    /// False: every hook call is compiled out.
    const ON: bool;
    fn before(&mut self, pkts: &[Packet]);
    fn after(&mut self, stage: Next, t: &Tables, pkts: &[Packet]);
    fn finish(&mut self, pkts: &[Packet]);
}

/// No observer: the normal fast path.
struct Unobserved;

impl Observe for Unobserved {
    const ON: bool = false;
    #[inline(always)]
    fn before(&mut self, _: &[Packet]) {}
    #[inline(always)]
    fn after(&mut self, _: Next, _: &Tables, _: &[Packet]) {}
    #[inline(always)]
    fn finish(&mut self, _: &[Packet]) {}
}

impl Observe for Tracer {
    const ON: bool = true;
    fn before(&mut self, pkts: &[Packet]) {
        Tracer::before(self, pkts);
    }
    fn after(&mut self, stage: Next, t: &Tables, pkts: &[Packet]) {
        Tracer::after(self, stage, t, pkts);
    }
    fn finish(&mut self, pkts: &[Packet]) {
        Tracer::finish(self, pkts);
    }
}
