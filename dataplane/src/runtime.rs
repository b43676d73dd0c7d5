//! The poll-mode runtime: worker threads, each owning some ports, a buffer
//! pool and a pipeline, forwarding in a loop.
//!
//! A worker learns which of its ports have frames waiting from epoll (one
//! `epoll_wait(0)` per loop instead of a `read` per port), busy-polls while
//! traffic flows, and once `busy_poll` has passed without work (or up to
//! `idle_poll`, while no other task wants its CPU) sleeps in epoll until a
//! port's fd becomes readable or the control plane wakes it, so an idle node
//! costs close to nothing. After a round that delivered to a pod or the
//! node (a TAP) it yields its CPU once, so that a reader sharing the core takes
//! what it was given before the worker goes on (`yield_on_delivery`).
//!
//! The control plane talks to workers through a command channel plus an
//! eventfd waker; tables reach them through [`TableHandle`] snapshots, never
//! through a lock.
//!
//! A packet whose output port belongs to another worker is handed over through
//! a lock-free ring from its worker to the owner (one ring per ordered pair of
//! workers, used single-producer single-consumer).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_queue::ArrayQueue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::buf::{Batch, Packet, Pool, PortId, DEFAULT_BUF_SIZE, MAX_BATCH};
use crate::drop::DropReason;
use crate::pipeline::{Pipeline, TxQueues};
use crate::policy::Policy;
use crate::port::gso::Tcp4Gso;
use crate::port::Port;
use crate::stage::Counters;
use crate::sys::sched;
use crate::table::TableHandle;

/// A port a worker can own.
pub type BoxPort = Box<dyn Port + Send>;

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub workers: usize,
    /// Pin worker `i` to core `i` (modulo the cores there are).
    pub pin: bool,
    /// How long a worker keeps polling after its last packet before it
    /// sleeps in epoll (busy-poll window).
    pub busy_poll: Duration,
    /// How long a worker keeps polling after its last packet while no other
    /// task wants its CPU, past `busy_poll`: each empty round from then on
    /// yields once (`sched_yield`), and one that returns at once (nobody
    /// else ran) polls on, while one that let another task run ends the
    /// window. A worker sharing its core with a request/response application
    /// then still holds the CPU when the answer comes, as the application
    /// waits for it (a CPU that halts and is woken by another costs tens of
    /// microseconds on a VM), and a sender sharing the core gets it as soon
    /// as it wants it. Not above `busy_poll`: off.
    pub idle_poll: Duration,
    /// After a round that sent frames to a port whose reader runs on this
    /// machine ([`Port::feeds_local_reader`]: a pod or the node behind a
    /// TAP), give up the CPU (`sched_yield`) so that reader can take them
    /// before the worker goes on. Where the worker shares its core with the
    /// pods, a busy-polling worker otherwise keeps the receiving application
    /// off the CPU for the rest of its time slice while it goes on
    /// delivering, and the application's socket overflows. On a core of its
    /// own the worker finds nobody to yield to and carries on at once.
    pub yield_on_delivery: bool,
    /// Nice value a worker gives its own thread when it starts (`None`: the
    /// one it inherits). Where a worker shares its core with the pods, a
    /// lower one than theirs lets it drain what they queue before they queue
    /// more, as the kernel's own forwarding (softirq) runs ahead of the
    /// sockets it serves: a fast sender then loses less at its TAP and more of
    /// the core goes to frames that arrive. A worker that cannot set it (no
    /// `CAP_SYS_NICE`) runs on at the one it has and says so in
    /// [`Runtime::setup_warnings`] and [`WorkerStats::last_error`].
    pub nice: Option<i32>,
    /// Frames taken from one port per round.
    pub burst: usize,
    /// Buffers per worker.
    pub pool_size: usize,
    pub buf_size: usize,
    /// Longest sleep (housekeeping: counters, table refresh).
    pub max_sleep: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 1,
            pin: true,
            // Sleeping costs a request/response about 15 us per hop (measured
            // with scripts/bench-e2e --metrics rr: 40 us with no polling, 22
            // to 32 with 30 us to 3 ms of it, no trend). Polling longer costs a
            // sender that shares the worker's core: 64-byte UDP through the
            // socket uplink fell from 105-114 kpps at 30 us to 77-78 at 200.
            busy_poll: Duration::from_micros(30),
            // Polling on while nobody else wants the CPU kept every round trip
            // at 22-25 us (23-110 without) and cost no sender its rate
            // (BENCHMARKS.md, "Polling on while nobody else wants the CPU").
            idle_poll: Duration::from_micros(200),
            yield_on_delivery: true,
            nice: None,
            burst: 64,
            pool_size: 4096,
            buf_size: DEFAULT_BUF_SIZE,
            max_sleep: Duration::from_millis(100),
        }
    }
}

/// Counters of one port, kept by its worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Refused by the device (queue full, link down).
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// What the port itself counts (offloads, frames it dropped before the
    /// pipeline), as of the last publish.
    pub offload: crate::port::PortOffload,
}

/// A worker's published state (refreshed every few milliseconds while busy,
/// and before each sleep).
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    pub worker: usize,
    pub counters: Counters,
    pub ports: Vec<(PortId, String, PortStats)>,
    pub busy_polls: u64,
    pub idle_polls: u64,
    pub sleeps: u64,
    /// Rounds after which the worker gave up its CPU to a local reader
    /// ([`RuntimeConfig::yield_on_delivery`]).
    pub yields: u64,
    /// Packets handed to other workers.
    pub handoff_out: u64,
    /// Fresh buffers allocated because the pool ran dry.
    pub pool_grown: u64,
    /// The worker thread's nice value, as read back after it started.
    pub nice: Option<i32>,
    /// Policy verdicts and the connection table.
    pub policy: crate::policy::PolicyStats,
    pub last_error: Option<String>,
}

struct Shared {
    stats: Mutex<WorkerStats>,
    /// Loop iterations, for the service watchdog (one writer, relaxed).
    heartbeat: AtomicU64,
    stop: AtomicBool,
}

/// A captured frame: when (ns since the Unix epoch), which way, the bytes.
#[derive(Debug, Clone)]
pub struct Captured {
    pub unix_ns: u64,
    /// True for frames the port received, false for frames sent on it.
    pub rx: bool,
    pub frame: Vec<u8>,
}

/// An active capture on one port: frames are copied into a bounded channel;
/// when it is full (a slow reader) frames are skipped, never waited for.
struct Capture {
    port: PortId,
    remaining: usize,
    tx: Sender<Captured>,
}

/// A drop seen by a worker, for `sluicectl monitor`.
#[derive(Debug, Clone, Copy)]
pub struct MonitorEvent {
    pub unix_ns: u64,
    pub worker: usize,
    pub drop: crate::pipeline::DropEvent,
}

/// A packet a worker traced, for `sluicectl trace`.
#[derive(Debug, Clone)]
pub struct TraceRecord {
    pub unix_ns: u64,
    pub worker: usize,
    pub packet: crate::trace::Traced,
}

enum Command {
    Capture(Capture),
    Monitor(Sender<MonitorEvent>),
    Trace {
        filter: crate::trace::Filter,
        count: u32,
        until: Instant,
        tx: Sender<TraceRecord>,
    },
    AddPort {
        id: PortId,
        port: BoxPort,
        /// Answered once the port is served.
        reply: Sender<()>,
    },
    RemovePort {
        id: PortId,
        reply: Sender<Option<BoxPort>>,
    },
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The set of workers.
pub struct Runtime {
    workers: Vec<WorkerHandle>,
    /// Which worker owns each port (control-plane copy).
    owners: Mutex<Vec<Option<usize>>>,
    /// Shared owner map the workers read for handoff decisions.
    port_owner: Arc<OwnerMap>,
    /// What workers could not set up on their threads (nice), one line each.
    setup_warnings: Vec<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// Port → owning worker, readable by workers without locks (one byte per
/// port, relaxed: a stale read only sends a packet through the owner ring of
/// the previous owner, which drops it as `UnknownPort`-style tx error).
struct OwnerMap {
    slots: Vec<std::sync::atomic::AtomicU8>,
}

const NO_OWNER: u8 = u8::MAX;

/// How long [`Runtime::add_port`] waits for the worker to take a port: a
/// worker reads its commands every round, so only a stuck one takes this long.
const PORT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_PORTS: usize = 4096;

impl Runtime {
    /// Starts `cfg.workers` workers forwarding with `tables`; `policy` makes
    /// each worker's policy state.
    pub fn start<P, F>(cfg: &RuntimeConfig, tables: &TableHandle, policy: F) -> io::Result<Runtime>
    where
        P: Policy + Send + 'static,
        F: Fn() -> P,
    {
        let n = cfg.workers.clamp(1, 64);
        let port_owner = Arc::new(OwnerMap {
            slots: (0..MAX_PORTS)
                .map(|_| std::sync::atomic::AtomicU8::new(NO_OWNER))
                .collect(),
        });
        // rings[from][to]
        let rings: Vec<Vec<Arc<ArrayQueue<Packet>>>> = (0..n)
            .map(|_| {
                (0..n)
                    .map(|_| Arc::new(ArrayQueue::new(4 * MAX_BATCH)))
                    .collect()
            })
            .collect();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (setup_tx, setup_rx) = std::sync::mpsc::channel();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let (tx, rx) = crossbeam_channel::unbounded();
            let shared = Arc::new(Shared {
                stats: Mutex::new(WorkerStats {
                    worker: i,
                    ..Default::default()
                }),
                heartbeat: AtomicU64::new(0),
                stop: AtomicBool::new(false),
            });
            let w = Worker {
                id: i,
                cfg: cfg.clone(),
                poll,
                commands: rx,
                shared: shared.clone(),
                pipeline: Pipeline::new(tables, policy()),
                pool: Pool::new(cfg.pool_size, cfg.buf_size),
                cut: Batch::new(),
                ports: Vec::new(),
                ready: Vec::new(),
                tx: TxQueues::with_ports(8),
                outgoing: rings[i].clone(),
                incoming: rings.iter().map(|r| r[i].clone()).collect(),
                monitors: Vec::new(),
                captures: Vec::new(),
                tracer: None,
                epoch: Instant::now(),
                delivered_local: false,
                kernel_cursor: 0,
                last_kernel: 0,
                setup: Some(setup_tx.clone()),
                owners: port_owner.clone(),
                stats: WorkerStats {
                    worker: i,
                    ..Default::default()
                },
                core: if cfg.pin && !cores.is_empty() {
                    Some(cores[i % cores.len()])
                } else {
                    None
                },
            };
            let thread = std::thread::Builder::new()
                .name(format!("sluice-w{i}"))
                .spawn(move || w.run())?;
            workers.push(WorkerHandle {
                commands: tx,
                waker,
                shared,
                thread: Some(thread),
            });
        }
        // Each worker reports once, before its first round; one that does not
        // in time is not waited for.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut setup_warnings = Vec::new();
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            match setup_rx.recv_timeout(left) {
                Ok((i, Some(e))) => setup_warnings.push(format!("worker {i}: {e}")),
                Ok((_, None)) => {}
                Err(_) => break,
            }
        }
        Ok(Runtime {
            workers,
            owners: Mutex::new(vec![None; MAX_PORTS]),
            port_owner,
            setup_warnings,
        })
    }

    /// What the workers could not set up on their threads at start (their
    /// nice value), one line each; they run on regardless.
    pub fn setup_warnings(&self) -> &[String] {
        &self.setup_warnings
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Hands a port to a worker: the uplink and host port to worker 0, pod
    /// ports spread by id. Returns once the worker serves the port, so a
    /// frame routed to it from then on is sent, not dropped as meant for a
    /// port nobody serves.
    pub fn add_port(&self, id: PortId, port: BoxPort) -> io::Result<()> {
        self.add_port_within(id, port, PORT_COMMAND_TIMEOUT)
    }

    /// [`Runtime::add_port`], waiting at most `wait` for the worker. A worker
    /// that does not answer in time drops the port when it comes to the
    /// command (the slot is free again at once), so the caller may clean up
    /// behind the error.
    fn add_port_within(&self, id: PortId, port: BoxPort, wait: Duration) -> io::Result<()> {
        if id.index() >= MAX_PORTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("port id {} over {MAX_PORTS}", id.0),
            ));
        }
        let w = if id.is_pod() {
            id.index() % self.workers.len()
        } else {
            0
        };
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners[id.index()].is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("port {id} is already attached"),
            ));
        }
        owners[id.index()] = Some(w);
        // Release: pairs with the workers' relaxed loads; a worker that reads
        // the old value only mis-routes packets for a port not yet serving.
        self.port_owner.slots[id.index()].store(w as u8, Ordering::Release);
        // Not held while the worker answers: other ports' calls go on.
        drop(owners);
        let h = &self.workers[w];
        let (reply, taken) = crossbeam_channel::bounded(1);
        let sent = h
            .commands
            .send(Command::AddPort { id, port, reply })
            .map_err(|_| io::Error::other(format!("worker {w} stopped")))
            .and_then(|()| h.waker.wake());
        let res = sent.and_then(|()| {
            taken.recv_timeout(wait).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("worker {w} did not take port {id} within {wait:?}"),
                )
            })
        });
        if res.is_err() {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            // Withdraw it, unless a remove_port already has: the worker, when
            // it reads its commands, installs the port and at once hands it
            // to a reply nobody waits for, which drops it.
            if owners[id.index()] == Some(w) {
                owners[id.index()] = None;
                self.port_owner.slots[id.index()].store(NO_OWNER, Ordering::Release);
                let (gone, _) = crossbeam_channel::bounded(1);
                let _ = h.commands.send(Command::RemovePort { id, reply: gone });
                let _ = h.waker.wake();
            }
        }
        res
    }

    /// Takes a port back from its worker (waits until the worker has let go of
    /// it, so its fd can be closed or the device deleted safely).
    pub fn remove_port(&self, id: PortId) -> Option<BoxPort> {
        let w = {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            owners.get_mut(id.index())?.take()?
        };
        self.port_owner.slots[id.index()].store(NO_OWNER, Ordering::Release);
        let h = &self.workers[w];
        let (tx, rx) = crossbeam_channel::bounded(1);
        h.commands
            .send(Command::RemovePort { id, reply: tx })
            .ok()?;
        h.waker.wake().ok()?;
        rx.recv_timeout(PORT_COMMAND_TIMEOUT).ok().flatten()
    }

    /// Copies the next `count` frames received or sent on `port` into the
    /// returned channel (bounded; frames are skipped rather than slowing the
    /// worker). `None` if no worker owns the port.
    pub fn capture(&self, port: PortId, count: usize) -> Option<Receiver<Captured>> {
        let w = (*self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(port.index())?)?;
        let (tx, rx) = crossbeam_channel::bounded(count.clamp(1, 65_536));
        let h = &self.workers[w];
        h.commands
            .send(Command::Capture(Capture {
                port,
                remaining: count,
                tx,
            }))
            .ok()?;
        h.waker.wake().ok()?;
        Some(rx)
    }

    /// Streams every worker's drops into the returned channel (bounded: events
    /// are skipped, never waited for) until the receiver is dropped.
    pub fn monitor(&self) -> Receiver<MonitorEvent> {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        for h in &self.workers {
            let _ = h.commands.send(Command::Monitor(tx.clone()));
            let _ = h.waker.wake();
        }
        rx
    }

    /// Arms a trace of the next `count` packets matching `filter` on every
    /// worker, for at most `timeout`; the traced packets arrive on the
    /// returned channel (each worker traces up to `count`: stop reading after
    /// `count` in all). Dropping the receiver ends the trace at the next
    /// traced packet or the timeout, whichever comes first.
    pub fn trace(
        &self,
        filter: crate::trace::Filter,
        count: u32,
        timeout: Duration,
    ) -> Receiver<TraceRecord> {
        let (tx, rx) = crossbeam_channel::bounded(count.clamp(1, crate::trace::MAX_TRACE) as usize);
        let until = Instant::now() + timeout;
        for h in &self.workers {
            let _ = h.commands.send(Command::Trace {
                filter: filter.clone(),
                count,
                until,
                tx: tx.clone(),
            });
            let _ = h.waker.wake();
        }
        rx
    }

    /// The latest published stats of every worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        self.workers
            .iter()
            .map(|h| {
                h.shared
                    .stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .collect()
    }

    /// Sum of the workers' loop counters: grows while workers are alive (for
    /// the service watchdog).
    pub fn heartbeat(&self) -> u64 {
        self.workers
            .iter()
            .map(|h| h.shared.heartbeat.load(Ordering::Relaxed))
            .sum()
    }

    /// Asks every worker to refresh its stats now.
    pub fn wake_all(&self) {
        for h in &self.workers {
            let _ = h.waker.wake();
        }
    }

    /// Stops the workers and waits for them; their ports are dropped (TAPs
    /// stay if persistent).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for h in &self.workers {
            h.shared.stop.store(true, Ordering::Release);
            let _ = h.waker.wake();
        }
        for h in &mut self.workers {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const WAKE: Token = Token(usize::MAX);

struct OwnedPort {
    id: PortId,
    name: String,
    port: BoxPort,
    has_fd: bool,
    /// [`Port::feeds_local_reader`], asked once.
    local_reader: bool,
    stats: PortStats,
}

struct Worker<P: Policy> {
    id: usize,
    cfg: RuntimeConfig,
    poll: Poll,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    pipeline: Pipeline<P>,
    pool: Pool,
    /// Segments of superframes cut for a port that cannot send them whole.
    cut: Batch,
    /// Indexed by port id.
    ports: Vec<Option<OwnedPort>>,
    /// Port ids with frames (maybe) waiting.
    ready: Vec<PortId>,
    tx: TxQueues,
    outgoing: Vec<Arc<ArrayQueue<Packet>>>,
    incoming: Vec<Arc<ArrayQueue<Packet>>>,
    owners: Arc<OwnerMap>,
    stats: WorkerStats,
    core: Option<core_affinity::CoreId>,
    /// Active captures; empty (one branch per burst) when nobody captures.
    captures: Vec<Capture>,
    /// `sluicectl monitor` subscribers.
    monitors: Vec<Sender<MonitorEvent>>,
    /// Where this worker's traced packets go, while a trace is armed.
    tracer: Option<Sender<TraceRecord>>,
    /// Origin of the monotonic `now` handed to the pipeline.
    epoch: Instant,
    /// This round sent frames to a port with a local reader.
    delivered_local: bool,
    /// Index in `ports` of the first pod port whose kernel counters the next
    /// reading covers ([`kernel_stats_due`]).
    kernel_cursor: usize,
    /// When (ns from `epoch`) the kernel's counters were last read.
    last_kernel: u64,
    /// Where the worker reports how its thread set-up went, once.
    setup: Option<std::sync::mpsc::Sender<(usize, Option<String>)>>,
}

/// Sends `q` on `op`, which is left empty, and counts the outcome.
fn transmit(op: &mut OwnedPort, pool: &mut Pool, q: &mut Batch, stats: &mut WorkerStats) {
    let n = q.len();
    let bytes: u64 = q.iter().map(|p| p.len() as u64).sum();
    match op.port.tx_burst(pool, q) {
        Ok(sent) => {
            op.stats.tx_packets += sent as u64;
            op.stats.tx_bytes += if sent == n { bytes } else { 0 };
            op.stats.tx_dropped += (n - sent) as u64;
        }
        Err(e) => {
            op.stats.tx_errors += 1;
            stats.last_error = Some(format!("tx on {}: {e}", op.name));
        }
    }
    pool.free_batch(q);
}

/// [`transmit`] for a port that cannot send superframes whole: each is cut
/// into segments (outer headers and all, [`Tcp4Gso`]) in pool buffers, sent a
/// batch at a time. One that cannot be cut (no buffers, bad headers, segments
/// longer than a buffer) is lost, counted in the port's `tx_dropped`.
fn transmit_cut(
    op: &mut OwnedPort,
    pool: &mut Pool,
    q: &mut Batch,
    cut: &mut Batch,
    stats: &mut WorkerStats,
) {
    for p in q.drain() {
        if !p.meta.is_superframe() {
            cut.push(p);
        } else {
            let ip_at = usize::from(p.meta.gso_ip);
            match Tcp4Gso::parse_at(p.data(), ip_at, p.meta.gso_size) {
                Ok(g) => {
                    for i in 0..g.count() {
                        if cut.is_full() {
                            transmit(op, pool, cut, stats);
                        }
                        let Some(mut s) = pool.alloc() else {
                            op.stats.tx_dropped += 1;
                            break;
                        };
                        match g.write_segment(p.data(), i, s.rx_area()) {
                            Ok(n) => {
                                s.set_received(n);
                                s.meta = p.meta;
                                s.meta.gso_size = 0;
                                cut.push(s);
                            }
                            Err(_) => {
                                pool.free(s);
                                op.stats.tx_dropped += 1;
                                break;
                            }
                        }
                    }
                }
                Err(_) => op.stats.tx_dropped += 1,
            }
            pool.free(p);
        }
        if cut.is_full() {
            transmit(op, pool, cut, stats);
        }
    }
    if !cut.is_empty() {
        transmit(op, pool, cut, stats);
    }
}

/// How often at most a worker reads the kernel's counters of its ports (a few
/// system calls per port, many ports per worker): less often than it
/// publishes its own.
const KERNEL_STATS_NS: u64 = 100_000_000;

/// Pod ports whose kernel counters one reading covers: a pod's TAP takes about
/// 4 µs, so a worker with hundreds of pods pauses 70 µs a reading, not
/// milliseconds, and goes round them all in a few seconds.
const KERNEL_STATS_PODS: usize = 16;

/// Whether the reading that starts at slot `start` of `slots` covers the port
/// in slot `i`: every node port (the uplink, the host port), and the pod
/// ports in the [`KERNEL_STATS_PODS`] slots from `start` on, wrapping round.
fn kernel_stats_due(i: usize, slots: usize, start: usize, pod: bool) -> bool {
    !pod || (i + slots - start % slots.max(1)) % slots.max(1) < KERNEL_STATS_PODS
}

/// Whether a worker that has had no work for `idle_for` ns sleeps now: once
/// `busy_poll` has passed, unless `idle_poll` has not and `unwanted` says no
/// other task wants the CPU (asked only then: it yields).
fn sleeps_now(
    idle_for: u64,
    busy_poll: u64,
    idle_poll: u64,
    unwanted: impl FnOnce() -> bool,
) -> bool {
    idle_for >= busy_poll && !(idle_for < idle_poll && unwanted())
}

/// Gives up the CPU once and says whether nobody took it: the call came back
/// in less than [`YIELD_UNWANTED`], so no other task was waiting to run here.
fn cpu_unwanted() -> bool {
    let t = Instant::now();
    std::thread::yield_now();
    t.elapsed() < YIELD_UNWANTED
}

/// A `sched_yield` that switched to another task and back takes at least two
/// context switches and that task's turn; one with nobody to switch to, well
/// under a microsecond.
const YIELD_UNWANTED: Duration = Duration::from_micros(5);

impl<P: Policy> Worker<P> {
    fn run(mut self) {
        if let Some(c) = self.core {
            core_affinity::set_for_current(c);
        }
        let mut setup_error = None;
        if let Some(n) = self.cfg.nice {
            if let Err(e) = sched::set_thread_nice(n) {
                setup_error = Some(format!("set nice {n}: {e}"));
            }
        }
        self.stats.nice = sched::thread_nice().ok();
        self.stats.last_error.clone_from(&setup_error);
        if let Some(tx) = self.setup.take() {
            let _ = tx.send((self.id, setup_error));
        }
        let epoch = self.epoch;
        let mut events = Events::with_capacity(256);
        let mut batch = Batch::new();
        // Times (from `epoch`) of the last round that found work and of the
        // last round.
        let mut last_work: u64 = 0;
        let mut last_round: u64 = 0;
        let busy_poll = self.cfg.busy_poll.as_nanos() as u64;
        let idle_poll = self.cfg.idle_poll.as_nanos() as u64;
        // One clock read per round (`now` below) serves the busy-poll window
        // and the publishing interval both.
        const PUBLISH_NS: u64 = 50_000_000;
        let mut last_publish: u64 = 0;
        let mut loops: u64 = 0;
        while !self.shared.stop.load(Ordering::Acquire) {
            loops += 1;
            self.shared.heartbeat.store(loops, Ordering::Relaxed);
            self.handle_commands();
            let idle_for = last_round.saturating_sub(last_work);
            let timeout = if sleeps_now(idle_for, busy_poll, idle_poll, cpu_unwanted) {
                self.stats.sleeps += 1;
                self.publish(last_round);
                last_publish = last_round;
                Some(self.cfg.max_sleep)
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stats.last_error = Some(format!("epoll: {e}"));
                }
            }
            for ev in events.iter() {
                if ev.token() != WAKE {
                    let id = PortId(ev.token().0 as u16);
                    if !self.ready.contains(&id) {
                        self.ready.push(id);
                    }
                }
            }
            let now = epoch.elapsed().as_nanos() as u64;
            let mut work = self.rx_ready(&mut batch, now);
            work += self.drain_incoming();
            if work > 0 {
                last_work = now;
                self.stats.busy_polls += 1;
                if std::mem::take(&mut self.delivered_local) && self.cfg.yield_on_delivery {
                    self.stats.yields += 1;
                    std::thread::yield_now();
                }
            } else {
                self.stats.idle_polls += 1;
            }
            last_round = now;
            if now.saturating_sub(last_publish) >= PUBLISH_NS {
                self.publish(now);
                last_publish = now;
            }
        }
        self.publish(u64::MAX);
    }

    fn handle_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Capture(c) => self.captures.push(c),
                Command::Monitor(m) => {
                    self.monitors.push(m);
                    self.pipeline.set_monitor(true);
                }
                Command::Trace {
                    filter,
                    count,
                    until,
                    tx,
                } => {
                    let deadline = until.saturating_duration_since(self.epoch).as_nanos() as u64;
                    self.pipeline.set_trace(filter, count, deadline);
                    self.tracer = Some(tx);
                }
                Command::AddPort { id, port, reply } => {
                    if let Some(fd) = port.rx_fd() {
                        let _ = self.poll.registry().register(
                            &mut SourceFd(&fd),
                            Token(id.index()),
                            Interest::READABLE,
                        );
                    }
                    let name = port.name().to_owned();
                    let has_fd = port.rx_fd().is_some();
                    let local_reader = port.feeds_local_reader();
                    if self.ports.len() <= id.index() {
                        self.ports.resize_with(id.index() + 1, || None);
                    }
                    self.ports[id.index()] = Some(OwnedPort {
                        id,
                        name,
                        port,
                        has_fd,
                        local_reader,
                        stats: PortStats::default(),
                    });
                    // Frames may already wait (edge-triggered epoll saw none yet).
                    self.ready.push(id);
                    let _ = reply.send(());
                }
                Command::RemovePort { id, reply } => {
                    let p = self.ports.get_mut(id.index()).and_then(Option::take);
                    if let Some(p) = &p {
                        if let Some(fd) = p.port.rx_fd() {
                            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                        }
                    }
                    self.ready.retain(|r| *r != id);
                    let _ = reply.send(p.map(|p| p.port));
                }
            }
        }
    }

    /// Receives from every ready port once. A port that filled its burst stays
    /// ready (edge-triggered epoll will not report it again); a port without an
    /// fd is always ready.
    fn rx_ready(&mut self, batch: &mut Batch, now: u64) -> usize {
        let mut work = 0;
        let mut i = 0;
        let burst = self.cfg.burst.min(MAX_BATCH);
        while i < self.ready.len() {
            let id = self.ready[i];
            let Some(Some(op)) = self.ports.get_mut(id.index()) else {
                self.ready.swap_remove(i);
                continue;
            };
            let n = match op.port.rx_burst(&mut self.pool, batch, burst) {
                Ok(n) => n,
                Err(e) => {
                    op.stats.rx_errors += 1;
                    self.stats.last_error = Some(format!("rx on {}: {e}", op.name));
                    0
                }
            };
            op.stats.rx_packets += n as u64;
            op.stats.rx_bytes += batch.iter().map(|p| p.len() as u64).sum::<u64>();
            let drained = n < burst && op.has_fd;
            let starved = n < burst && self.pool.available() == 0;
            if starved {
                // Not drained: out of buffers. Keep it ready and grow.
                self.grow_pool();
                i += 1;
            } else if drained {
                self.ready.swap_remove(i);
            } else {
                i += 1;
            }
            if n == 0 {
                continue;
            }
            if !self.captures.is_empty() {
                copy_out(&mut self.captures, id, batch, true);
            }
            self.pipeline
                .process(id, batch, now, &mut self.pool, &mut self.tx);
            if !self.monitors.is_empty() {
                self.send_events();
            }
            if self.tracer.is_some() {
                self.send_traces(now);
            }
            self.flush();
            work += n;
        }
        work
    }

    #[cold]
    fn send_events(&mut self) {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let worker = self.id;
        let monitors = &mut self.monitors;
        for drop in self.pipeline.take_events() {
            monitors.retain(|m| {
                !matches!(
                    m.try_send(MonitorEvent {
                        unix_ns,
                        worker,
                        drop
                    }),
                    Err(crossbeam_channel::TrySendError::Disconnected(_))
                )
            });
        }
        if self.monitors.is_empty() {
            self.pipeline.set_monitor(false);
        }
    }

    #[cold]
    fn send_traces(&mut self, now: u64) {
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let Some(tx) = &self.tracer else { return };
        let mut gone = false;
        for packet in self.pipeline.take_traces() {
            let r = tx.try_send(TraceRecord {
                unix_ns,
                worker: self.id,
                packet,
            });
            gone |= matches!(r, Err(crossbeam_channel::TrySendError::Disconnected(_)));
        }
        self.pipeline.expire_trace(now);
        if gone {
            self.pipeline
                .set_trace(crate::trace::Filter::default(), 0, 0);
        }
        if gone || !self.pipeline.tracing() {
            self.tracer = None;
        }
    }

    fn grow_pool(&mut self) {
        for _ in 0..MAX_BATCH {
            self.pool.free(Packet::with_capacity(self.pool.buf_size()));
        }
        self.stats.pool_grown += MAX_BATCH as u64;
    }

    /// Transmits every pending queue on owned ports, or hands it to the owner.
    fn flush(&mut self) {
        let Worker {
            tx,
            ports,
            pool,
            cut,
            outgoing,
            owners,
            stats,
            id,
            captures,
            delivered_local,
            ..
        } = self;
        for (port, q) in tx.pending() {
            match ports.get_mut(port.index()).and_then(Option::as_mut) {
                Some(op) => {
                    if !captures.is_empty() {
                        copy_out(captures, port, q, false);
                    }
                    *delivered_local |= op.local_reader && !q.is_empty();
                    if !op.port.takes_superframes() && q.iter().any(|p| p.meta.is_superframe()) {
                        transmit_cut(op, pool, q, cut, stats);
                    } else {
                        transmit(op, pool, q, stats);
                    }
                }
                None => {
                    let owner = owners
                        .slots
                        .get(port.index())
                        .map_or(NO_OWNER, |s| s.load(Ordering::Relaxed));
                    if owner == NO_OWNER || usize::from(owner) == *id {
                        // Nobody serves this port (pod gone mid-flight).
                        stats.counters.drops[DropReason::TxError as usize] += q.len() as u64;
                        pool.free_batch(q);
                        continue;
                    }
                    let ring = &outgoing[usize::from(owner)];
                    for p in q.drain() {
                        match ring.push(p) {
                            Ok(()) => stats.handoff_out += 1,
                            Err(p) => {
                                stats.counters.drops[DropReason::TxQueueFull as usize] += 1;
                                pool.free(p);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Transmits packets other workers handed over.
    fn drain_incoming(&mut self) -> usize {
        let mut n = 0;
        for r in 0..self.incoming.len() {
            while let Some(p) = self.incoming[r].pop() {
                let q = self.tx.queue(p.meta.out_port);
                q.push(p);
                n += 1;
                if q.is_full() {
                    self.flush();
                }
            }
        }
        if n > 0 {
            self.flush();
        }
        n
    }

    /// Publishes the worker's stats as of `now` (ns from `epoch`); when
    /// [`KERNEL_STATS_NS`] have passed since the last such reading, reads the
    /// kernel's counters of the node ports and of the next
    /// [`KERNEL_STATS_PODS`] pod ports first ([`Port::update_kernel_stats`]).
    fn publish(&mut self, now: u64) {
        self.stats.counters = self.pipeline.counters().clone();
        self.stats.policy = self.pipeline.policy.stats();
        let (slots, start) = (self.ports.len(), self.kernel_cursor);
        let kernel = now.saturating_sub(self.last_kernel) >= KERNEL_STATS_NS;
        if kernel {
            self.last_kernel = now;
            self.kernel_cursor = (start + KERNEL_STATS_PODS) % slots.max(1);
        }
        self.stats.ports = self
            .ports
            .iter_mut()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_mut()?)))
            .map(|(i, p)| {
                let mut stats = p.stats.clone();
                if kernel && kernel_stats_due(i, slots, start, p.id.is_pod()) {
                    p.port.update_kernel_stats();
                }
                stats.offload = p.port.offload_stats();
                (p.id, p.name.clone(), stats)
            })
            .collect();
        if let Ok(mut s) = self.shared.stats.lock() {
            *s = self.stats.clone();
        }
    }
}

/// Copies a batch's frames into the captures on `port`; finished captures
/// (count reached, or the reader gone) are dropped.
#[cold]
fn copy_out(captures: &mut Vec<Capture>, port: PortId, batch: &Batch, rx: bool) {
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    captures.retain_mut(|c| {
        if c.port != port {
            return true;
        }
        for p in batch.iter() {
            if c.remaining == 0 {
                break;
            }
            match c.tx.try_send(Captured {
                unix_ns,
                rx,
                frame: p.data().to_vec(),
            }) {
                Ok(()) => c.remaining -= 1,
                Err(crossbeam_channel::TrySendError::Full(_)) => {}
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
            }
        }
        c.remaining > 0
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AllowAll;
    use crate::table::Mode;
    use crate::testkit;
    use std::collections::VecDeque;

    /// A port fed from a shared queue (so the test can push while a worker owns it).
    struct QueuePort {
        name: String,
        /// Stands for a TAP: a reader on this machine.
        local: bool,
        rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
        tx: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Port for QueuePort {
        fn name(&self) -> &str {
            &self.name
        }
        fn rx_burst(
            &mut self,
            pool: &mut Pool,
            batch: &mut Batch,
            max: usize,
        ) -> io::Result<usize> {
            let mut q = self.rx.lock().unwrap();
            let mut n = 0;
            while n < max {
                let Some(f) = q.pop_front() else { break };
                let mut p = pool.alloc().expect("buffer");
                p.load(&f);
                batch.push(p);
                n += 1;
            }
            Ok(n)
        }
        fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
            let n = batch.len();
            for p in batch.drain() {
                self.tx.lock().unwrap().push(p.data().to_vec());
                pool.free(p);
            }
            Ok(n)
        }
        fn feeds_local_reader(&self) -> bool {
            self.local
        }
    }

    type Frames = Arc<Mutex<VecDeque<Vec<u8>>>>;
    type Sent = Arc<Mutex<Vec<Vec<u8>>>>;

    fn qport(name: &str) -> (QueuePort, Frames, Sent) {
        let rx = Arc::new(Mutex::new(VecDeque::new()));
        let tx = Arc::new(Mutex::new(Vec::new()));
        (
            QueuePort {
                name: name.into(),
                local: false,
                rx: rx.clone(),
                tx: tx.clone(),
            },
            rx,
            tx,
        )
    }

    /// A UDP frame of `len` bytes from pod a1 to pod a2 on node A, from port
    /// `sport`.
    fn a1_to_a2(sport: u16, len: usize) -> Vec<u8> {
        testkit::udp_frame(
            testkit::POD_A1_MAC,
            crate::table::GATEWAY_MAC,
            testkit::POD_A1,
            testkit::POD_A2,
            sport,
            9,
            len,
        )
    }

    fn wait_for(mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn forwards_across_workers_and_stops() {
        for workers in [1, 2] {
            let rt = start_unpinned(workers);
            let (a1, a1_rx, _) = qport("a1");
            let (a2, _, a2_tx) = qport("a2");
            // Ports 2 and 3 land on different workers when there are two.
            rt.add_port(testkit::POD_A1_PORT, Box::new(a1)).unwrap();
            rt.add_port(testkit::POD_A2_PORT, Box::new(a2)).unwrap();
            for i in 0..100u16 {
                a1_rx.lock().unwrap().push_back(a1_to_a2(i, 80));
            }
            rt.wake_all();
            wait_for(|| a2_tx.lock().unwrap().len() == 100);
            let stats = rt.stats();
            assert_eq!(stats.len(), workers);
            assert!(rt.heartbeat() > 0);
            let back = rt.remove_port(testkit::POD_A2_PORT);
            assert!(back.is_some());
            assert!(rt.remove_port(testkit::POD_A2_PORT).is_none());
            rt.stop();
        }
    }

    /// A port whose worker is held up taking it: `name` is asked once
    /// there, and sleeps.
    struct SlowPort {
        name_delay: Duration,
        /// Set when `name` is asked, before it sleeps.
        asked: Arc<AtomicBool>,
        /// Set once `name` has slept.
        named: Arc<AtomicBool>,
        dropped: Arc<AtomicBool>,
    }

    impl Port for SlowPort {
        fn name(&self) -> &str {
            self.asked.store(true, Ordering::Release);
            std::thread::sleep(self.name_delay);
            self.named.store(true, Ordering::Release);
            "slow"
        }
        fn rx_burst(&mut self, _: &mut Pool, _: &mut Batch, _: usize) -> io::Result<usize> {
            Ok(0)
        }
        fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
            let n = batch.len();
            pool.free_batch(batch);
            Ok(n)
        }
    }

    impl SlowPort {
        fn new(name_delay: Duration) -> SlowPort {
            SlowPort {
                name_delay,
                asked: Arc::default(),
                named: Arc::default(),
                dropped: Arc::default(),
            }
        }
    }

    impl Drop for SlowPort {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::Release);
        }
    }

    /// A runtime on node A's tables with `workers` workers, unpinned.
    fn start_unpinned(workers: usize) -> Runtime {
        let tables = testkit::node_a(Mode::Vxlan, 0, 0);
        let cfg = RuntimeConfig {
            workers,
            pin: false,
            pool_size: 256,
            ..Default::default()
        };
        Runtime::start(&cfg, &tables, || AllowAll).unwrap()
    }

    #[test]
    fn add_port_returns_once_the_worker_serves_the_port() {
        let rt = start_unpinned(2);
        // One port on each worker.
        for id in [testkit::POD_A1_PORT, testkit::POD_A2_PORT] {
            let slow = SlowPort::new(Duration::from_millis(50));
            let named = slow.named.clone();
            rt.add_port(id, Box::new(slow)).unwrap();
            assert!(
                named.load(Ordering::Acquire),
                "add_port returned before the worker took port {id}"
            );
        }
        rt.stop();
    }

    #[test]
    fn a_worker_slow_to_take_a_port_holds_up_no_other_worker() {
        let rt = start_unpinned(2);
        let slow = SlowPort::new(Duration::from_secs(2));
        let (asked, named) = (slow.asked.clone(), slow.named.clone());
        std::thread::scope(|s| {
            let rt = &rt;
            let first = s.spawn(move || rt.add_port(testkit::POD_A1_PORT, Box::new(slow)));
            // Its worker is busy taking it; the other worker takes a2 meanwhile.
            wait_for(|| asked.load(Ordering::Acquire));
            let (a2, _, _) = qport("a2");
            rt.add_port(testkit::POD_A2_PORT, Box::new(a2)).unwrap();
            assert!(
                !named.load(Ordering::Acquire),
                "a2 was attached only after the slow port"
            );
            first.join().unwrap().unwrap();
        });
        rt.stop();
    }

    #[test]
    fn a_port_a_stuck_worker_does_not_take_in_time_is_withdrawn_and_dropped() {
        let rt = start_unpinned(1);
        let slow = SlowPort::new(Duration::from_millis(300));
        let dropped = slow.dropped.clone();
        let e = rt
            .add_port_within(
                testkit::POD_A1_PORT,
                Box::new(slow),
                Duration::from_millis(20),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("did not take port"), "{e}");
        // The slot is free again at once, and the worker, once back, drops
        // the withdrawn port before it takes the next one.
        let (a1, a1_rx, _) = qport("a1");
        let (a2, _, a2_tx) = qport("a2");
        rt.add_port(testkit::POD_A1_PORT, Box::new(a1)).unwrap();
        assert!(
            dropped.load(Ordering::Acquire),
            "the withdrawn port was not dropped"
        );
        rt.add_port(testkit::POD_A2_PORT, Box::new(a2)).unwrap();
        a1_rx.lock().unwrap().push_back(a1_to_a2(7, 60));
        rt.wake_all();
        wait_for(|| a2_tx.lock().unwrap().len() == 1);
        rt.stop();
    }

    #[test]
    fn past_the_window_a_worker_polls_on_only_while_nobody_wants_its_cpu() {
        let asked = std::cell::Cell::new(0);
        let ask = |answer: bool| {
            let asked = &asked;
            move || {
                asked.set(asked.get() + 1);
                answer
            }
        };
        // (idle for, busy_poll, idle_poll, nobody else wants the CPU) -> sleeps
        for (idle, busy, idle_poll, unwanted, sleeps, asks) in [
            (10, 30, 200, true, false, 0),
            (10, 30, 200, false, false, 0),
            (30, 30, 200, true, false, 1),
            (30, 30, 200, false, true, 1),
            (199, 30, 200, true, false, 1),
            (200, 30, 200, true, true, 0),
            // idle_poll not above busy_poll: off.
            (30, 30, 30, true, true, 0),
            (30, 30, 0, true, true, 0),
        ] {
            asked.set(0);
            assert_eq!(
                sleeps_now(idle, busy, idle_poll, ask(unwanted)),
                sleeps,
                "idle {idle}, busy_poll {busy}, idle_poll {idle_poll}, unwanted {unwanted}"
            );
            assert_eq!(asked.get(), asks, "idle {idle}: yields");
        }
    }

    #[test]
    fn kernel_counters_are_read_for_node_ports_always_and_pods_in_turn() {
        let due = |slots: usize, start: usize| -> Vec<usize> {
            (0..slots)
                .filter(|&i| kernel_stats_due(i, slots, start, i >= 2))
                .collect()
        };
        // Fewer slots than a reading covers: all of them, from any start.
        assert_eq!(due(5, 0), [0, 1, 2, 3, 4]);
        assert_eq!(due(5, 3), [0, 1, 2, 3, 4]);
        // 40 slots, node ports in 0 and 1: a reading covers 16 slots from
        // `start` on, wrapping round, and the node ports whatever the start.
        let d = due(40, 0);
        assert_eq!(d, (0..16).collect::<Vec<_>>());
        let d = due(40, 16);
        assert_eq!(d, [0, 1].into_iter().chain(16..32).collect::<Vec<_>>());
        let d = due(40, 32);
        assert_eq!(d, (0..8).chain(32..40).collect::<Vec<_>>());
        // Successive readings (the cursor moves 16 slots each) cover every
        // slot within ceil(40 / 16) = 3 readings.
        let mut seen = [false; 40];
        for r in 0..3 {
            for i in due(40, (r * KERNEL_STATS_PODS) % 40) {
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        // A cursor left past the end (ports were removed) still works.
        assert_eq!(due(5, 7), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn idle_worker_polls_for_the_window_then_sleeps() {
        let tables = testkit::node_a(Mode::Vxlan, 0, 0);
        let start = |busy_poll| {
            let cfg = RuntimeConfig {
                pin: false,
                pool_size: 64,
                busy_poll,
                idle_poll: Duration::ZERO,
                ..Default::default()
            };
            Runtime::start(&cfg, &tables, || AllowAll).unwrap()
        };
        // A window longer than the test: the worker keeps polling, never sleeps.
        let rt = start(Duration::from_secs(60));
        wait_for(|| rt.stats()[0].idle_polls > 1000);
        assert_eq!(rt.stats()[0].sleeps, 0);
        rt.stop();
        // No window: each empty round sleeps (up to `max_sleep`) at once.
        let rt = start(Duration::ZERO);
        wait_for(|| rt.stats()[0].sleeps >= 2);
        std::thread::sleep(Duration::from_millis(150));
        let st = &rt.stats()[0];
        assert!(
            st.idle_polls <= st.sleeps + 2,
            "{} empty rounds for {} sleeps",
            st.idle_polls,
            st.sleeps
        );
        rt.stop();
    }

    #[test]
    fn worker_runs_at_the_nice_it_is_given_or_says_why_not() {
        let tables = testkit::node_a(Mode::Vxlan, 0, 0);
        let inherited = sched::thread_nice().unwrap();
        // (setting, the nice the worker runs at, whether it reports an error)
        for (nice, runs_at, error) in [
            (None, inherited, false),
            (Some(7), 7, false),
            (Some(25), inherited, true),
        ] {
            let cfg = RuntimeConfig {
                pin: false,
                pool_size: 64,
                busy_poll: Duration::ZERO,
                nice,
                ..Default::default()
            };
            let rt = Runtime::start(&cfg, &tables, || AllowAll).unwrap();
            // Stats are published before the first sleep.
            wait_for(|| rt.stats()[0].sleeps >= 1);
            let st = &rt.stats()[0];
            assert_eq!(st.nice, Some(runs_at), "setting {nice:?}");
            match &st.last_error {
                Some(e) if error => assert!(e.contains("set nice 25"), "{e}"),
                other => assert!(!error && other.is_none(), "{other:?}"),
            }
            // The same, at once, from start.
            match rt.setup_warnings() {
                [w] if error => assert!(w.starts_with("worker 0: set nice 25"), "{w}"),
                other => assert!(!error && other.is_empty(), "{other:?}"),
            }
            rt.stop();
        }
        assert_eq!(sched::thread_nice().unwrap(), inherited);
    }

    #[test]
    fn worker_yields_after_delivering_to_a_local_reader_only() {
        // (a2 has a local reader, the setting) -> whether rounds end in a yield.
        for (local, setting, yields) in [
            (true, true, true),
            (false, true, false),
            (true, false, false),
        ] {
            let tables = testkit::node_a(Mode::Vxlan, 0, 0);
            let cfg = RuntimeConfig {
                pin: false,
                pool_size: 256,
                yield_on_delivery: setting,
                ..Default::default()
            };
            let rt = Runtime::start(&cfg, &tables, || AllowAll).unwrap();
            let (a1, a1_rx, _) = qport("a1");
            let (mut a2, _, a2_tx) = qport("a2");
            a2.local = local;
            rt.add_port(testkit::POD_A1_PORT, Box::new(a1)).unwrap();
            rt.add_port(testkit::POD_A2_PORT, Box::new(a2)).unwrap();
            for i in 0..20u16 {
                a1_rx.lock().unwrap().push_back(a1_to_a2(1000 + i, 60));
                // One frame per round: wait until it is through.
                wait_for(|| a2_tx.lock().unwrap().len() == usize::from(i) + 1);
            }
            wait_for(|| rt.stats()[0].busy_polls >= 20);
            let st = &rt.stats()[0];
            if yields {
                assert!(st.yields >= 20, "{} yields after 20 deliveries", st.yields);
                assert!(
                    st.yields <= st.busy_polls,
                    "{} yields, {} busy rounds",
                    st.yields,
                    st.busy_polls
                );
            } else {
                assert_eq!(st.yields, 0, "local reader {local}, setting {setting}");
            }
            rt.stop();
        }
    }
}
