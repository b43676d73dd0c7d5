//! Connection tracking: a table of the connections policy has let through,
//! so established flows and their replies skip the classifier.
//!
//! * Key: the 5-tuple normalised so both directions find one entry (the lower
//!   `(address, port)` end first); the entry remembers which end opened it.
//! * State: TCP follows SYN, SYN-ACK, ACK, FIN and RST (a Linux-like subset
//!   of its state machine); UDP and ICMP echo are unreplied or replied;
//!   anything else has one pseudo-state. Each state has an idle timeout
//!   ([`Timeouts`], Linux's defaults except TCP established, see there).
//! * Storage: a preallocated slab of entries indexed by a hashbrown
//!   `HashTable<u32>` of slab slots, both sized for [`Config::capacity`] at
//!   creation, so the fast path never allocates.
//! * Eviction is by idle timeout only, amortised: every insert checks a few
//!   slots (a clock hand over the slab), a full table checks more before it
//!   refuses, and the runtime may call [`Table::sweep`] between batches. A
//!   table full of live entries refuses new flows ([`Full`]), counted.
//!
//! A connection's two directions must find one entry: one worker owns a
//! [`Table`] alone, and several workers share a [`SharedTable`], shards of
//! tables behind locks, picked by [`symmetric_hash`] (the same for both
//! directions).
//!
//! Call order per packet: [`Table::lookup`]; on a hit [`Table::update`]
//! (which may say the connection was closed and a new one is starting); on a
//! miss, after the policy allowed the flow, [`Table::insert`].

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::HashTable;

use crate::flow::FlowKey;

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}
use tcp_flags::{ACK, FIN, RST, SYN};

/// Idle timeouts per state.
///
/// Linux's nf_conntrack defaults, except TCP established: Linux keeps it 5
/// days and kube-proxy lowers it to 1 day; Sluice uses RFC 5382's 2 h 4 min,
/// longer than the 2 h default TCP keepalive, so a kept-alive connection is
/// never cut and a vanished one frees its entry in hours, not days (the table
/// has a fixed size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: Duration,
    pub tcp_syn_recv: Duration,
    pub tcp_established: Duration,
    pub tcp_fin_wait: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_close: Duration,
    pub udp_unreplied: Duration,
    /// A UDP flow that has seen a reply (Linux's "stream").
    pub udp_replied: Duration,
    pub icmp: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            tcp_syn_sent: s(120),
            tcp_syn_recv: s(60),
            tcp_established: s(7440),
            tcp_fin_wait: s(120),
            tcp_time_wait: s(120),
            tcp_close: s(10),
            udp_unreplied: s(30),
            udp_replied: s(120),
            icmp: s(30),
            other: s(600),
        }
    }
}

/// A table's size and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most entries held (per worker, or per node for a [`SharedTable`]);
    /// memory is reserved for all of them.
    pub capacity: usize,
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            capacity: 131_072,
            timeouts: Timeouts::default(),
        }
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// The opener's SYN seen.
    TcpSynSent,
    /// The answer's SYN-ACK seen.
    TcpSynRecv,
    /// The opener's ACK after the SYN-ACK seen, or picked up mid-stream.
    TcpEstablished,
    /// One end sent FIN.
    TcpFinWait,
    /// Both ends sent FIN.
    TcpTimeWait,
    /// RST seen.
    TcpClose,
    UdpUnreplied,
    UdpReplied,
    /// ICMP echo (request and reply share the identifier).
    Icmp,
    /// Any other protocol.
    Other,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::TcpSynSent => "syn_sent",
            State::TcpSynRecv => "syn_recv",
            State::TcpEstablished => "established",
            State::TcpFinWait => "fin_wait",
            State::TcpTimeWait => "time_wait",
            State::TcpClose => "close",
            State::UdpUnreplied => "udp_unreplied",
            State::UdpReplied => "udp_replied",
            State::Icmp => "icmp",
            State::Other => "other",
        }
    }
}

/// Which way a packet goes relative to the packet that opened its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Orig,
    Reply,
}

/// What the owner of the table stores with an entry to decide later whether
/// it still holds (see `PolicyTables`): the policy snapshot it was last
/// checked against, and the generations of its two addresses when created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tag {
    pub snapshot: u32,
    /// Generation of the lower address of the normalised key.
    pub gen_lo: u32,
    /// Generation of the higher address.
    pub gen_hi: u32,
}

/// The table counters (per table, plain integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Live entries now.
    pub entries: u64,
    pub inserts: u64,
    /// Entries removed because they sat idle past their timeout.
    pub evictions: u64,
    /// Entries removed on request (address flushed, stale, closed and reopened).
    pub removed: u64,
    /// New flows refused because every entry was live.
    pub full: u64,
}

/// The table is full of live entries: the new flow is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection table full: all {capacity} entries are live")]
pub struct Full {
    pub capacity: usize,
}

/// An entry's slot, valid until the entry is removed (a stale handle finds a
/// free slot and is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(u32);

/// What an update found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Part of the tracked connection.
    Tracked,
    /// A SYN on a closed connection's tuple: a new connection, to be decided
    /// by policy afresh (remove the entry and handle it as a miss).
    Reopen,
}

/// What [`Table::hit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// A tracked connection, advanced: let the packet through.
    Tracked(Dir),
    /// No live entry: a new flow.
    Miss,
    /// The entry was checked against another policy snapshot: check its
    /// [`Tag`] again, then [`Table::set_tag`] and [`Table::update`], or
    /// [`Table::remove`].
    Check(Handle, Dir),
    /// A SYN on a closed connection: remove the entry, then a new flow.
    Reopen(Handle),
}

/// The normalised key: `(lo, lo_port)` is the smaller end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct Key {
    lo: u32,
    hi: u32,
    lo_port: u16,
    hi_port: u16,
    proto: u8,
}

impl Key {
    /// The key and whether the packet's source is the lower end.
    #[inline(always)]
    fn of(k: &FlowKey) -> (Key, bool) {
        let src_lo = (u64::from(k.src) << 16 | u64::from(k.sport))
            <= (u64::from(k.dst) << 16 | u64::from(k.dport));
        let key = if src_lo {
            Key {
                lo: k.src,
                hi: k.dst,
                lo_port: k.sport,
                hi_port: k.dport,
                proto: k.proto,
            }
        } else {
            Key {
                lo: k.dst,
                hi: k.src,
                lo_port: k.dport,
                hi_port: k.sport,
                proto: k.proto,
            }
        };
        (key, src_lo)
    }

    /// A seeded folded multiply (foldhash's core): one 64x64->128 multiply,
    /// good bits at both ends for hashbrown's bucket index and tag. The
    /// per-table random seed keeps remote senders from choosing collisions.
    #[inline(always)]
    fn hash(&self, seed: u64) -> u64 {
        let a = ((u64::from(self.lo) << 32) | u64::from(self.hi)) ^ seed;
        // `b` never becomes zero: the constant's high bits are above the 40 data bits.
        let b = ((u64::from(self.lo_port) << 24)
            | (u64::from(self.hi_port) << 8)
            | u64::from(self.proto))
            ^ 0x9E37_79B9_7F4A_7C15;
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    }

    /// The unseeded hash, the same on every worker (steering).
    #[inline(always)]
    fn steering_hash(&self) -> u64 {
        let a =
            ((u64::from(self.lo) << 32) | u64::from(self.hi)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let b = ((u64::from(self.lo_port) << 32)
            | (u64::from(self.hi_port) << 16)
            | u64::from(self.proto))
        .wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let h = a ^ b.rotate_left(29);
        let h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 29)
    }
}

/// The two addresses of a flow, the lower end (by address, then port) first:
/// the order of [`Tag::gen_lo`] and [`Tag::gen_hi`].
#[inline]
pub fn ends(k: &FlowKey) -> (u32, u32) {
    let (key, _) = Key::of(k);
    (key.lo, key.hi)
}

/// A hash of the 5-tuple that both directions share: a [`SharedTable`] picks
/// shards by it (and a runtime could steer packets to workers by it).
#[inline]
pub fn symmetric_hash(k: &FlowKey) -> u64 {
    Key::of(k).0.steering_hash()
}

/// The hot part of an entry: 32 bytes, aligned, so one entry is one half
/// cache line (the address generations, needed only on a snapshot change,
/// live in a parallel array).
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
struct Entry {
    key: Key,
    live: bool,
    /// The opener is the lower end of the key.
    orig_lo: bool,
    state: State,
    /// FIN seen from the opener (bit 0) and from the answer (bit 1).
    fins: u8,
    /// [`Tag::snapshot`].
    snapshot: u32,
    expires: u64,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32);

const FREE: Entry = Entry {
    key: Key {
        lo: 0,
        hi: 0,
        lo_port: 0,
        hi_port: 0,
        proto: 0,
    },
    live: false,
    orig_lo: true,
    state: State::Other,
    fins: 0,
    snapshot: 0,
    expires: 0,
};

/// A read-only view of an entry (operators, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    /// The flow as its first packet went.
    pub orig: FlowKey,
    pub state: State,
    pub tag: Tag,
    /// Nanoseconds (the caller's clock) after which it is idle.
    pub expires: u64,
}

/// Slots checked on every insert.
const SWEEP_ON_INSERT: usize = 2;
/// Slots checked before refusing a flow because the table is full.
const SWEEP_WHEN_FULL: usize = 64;

/// One worker's connection table (or one shard of a [`SharedTable`]). See
/// the module documentation.
#[derive(Debug)]
pub struct Table {
    index: HashTable<u32>,
    entries: Vec<Entry>,
    /// [`Tag::gen_lo`] and [`Tag::gen_hi`] per slot.
    gens: Vec<(u32, u32)>,
    free: Vec<u32>,
    seed: u64,
    hand: usize,
    capacity: usize,
    timeouts: [u64; 10],
    counters: Counters,
}

impl Table {
    /// A table with all its memory reserved (at least one entry).
    pub fn new(cfg: Config) -> Table {
        let capacity = cfg.capacity.clamp(1, u32::MAX as usize);
        let t = cfg.timeouts;
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Table {
            index: HashTable::with_capacity(capacity),
            entries: Vec::with_capacity(capacity),
            gens: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            seed: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
            },
            hand: 0,
            capacity,
            timeouts: [
                ns(t.tcp_syn_sent),
                ns(t.tcp_syn_recv),
                ns(t.tcp_established),
                ns(t.tcp_fin_wait),
                ns(t.tcp_time_wait),
                ns(t.tcp_close),
                ns(t.udp_unreplied),
                ns(t.udp_replied),
                ns(t.icmp),
                ns(t.other),
            ],
            counters: Counters::default(),
        }
    }

    #[inline(always)]
    fn timeout(&self, s: State) -> u64 {
        self.timeouts[s as usize]
    }

    /// The live entry of this packet's connection and the packet's direction.
    /// An entry found idle past its timeout is removed and not returned.
    #[inline]
    pub fn lookup(&mut self, k: &FlowKey, now: u64) -> Option<(Handle, Dir)> {
        let (key, src_lo) = Key::of(k);
        let entries = &self.entries;
        let slot = *self
            .index
            .find(key.hash(self.seed), |&i| entries[i as usize].key == key)?;
        let e = &self.entries[slot as usize];
        if e.expires <= now {
            self.remove_slot(slot);
            self.counters.evictions += 1;
            self.counters.removed -= 1;
            return None;
        }
        let dir = if e.orig_lo == src_lo {
            Dir::Orig
        } else {
            Dir::Reply
        };
        Some((Handle(slot), dir))
    }

    /// Advances the connection's state with a packet going `dir` with TCP
    /// flags `flags` (0 for other protocols), and restarts its idle timer.
    #[inline]
    pub fn update(&mut self, h: Handle, dir: Dir, flags: u8, now: u64) -> Update {
        match self.entries.get_mut(h.0 as usize) {
            Some(e) if e.live => step(e, &self.timeouts, dir, flags, now),
            _ => Update::Reopen,
        }
    }

    /// The fast path, [`Table::lookup`] and [`Table::update`] in one: finds
    /// the packet's connection and, when its entry was last checked against
    /// `snapshot`, advances it. Otherwise says what the caller must do.
    #[inline]
    pub fn hit(&mut self, k: &FlowKey, flags: u8, now: u64, snapshot: u32) -> Hit {
        let (key, src_lo) = Key::of(k);
        let entries = &self.entries;
        let Some(&slot) = self
            .index
            .find(key.hash(self.seed), |&i| entries[i as usize].key == key)
        else {
            return Hit::Miss;
        };
        let e = &mut self.entries[slot as usize];
        if e.expires <= now {
            self.remove_slot(slot);
            self.counters.evictions += 1;
            self.counters.removed -= 1;
            return Hit::Miss;
        }
        let dir = if e.orig_lo == src_lo {
            Dir::Orig
        } else {
            Dir::Reply
        };
        if e.snapshot != snapshot {
            return Hit::Check(Handle(slot), dir);
        }
        match step(e, &self.timeouts, dir, flags, now) {
            Update::Tracked => Hit::Tracked(dir),
            Update::Reopen => Hit::Reopen(Handle(slot)),
        }
    }

    /// Tracks a new connection whose first packet is `k` with TCP flags
    /// `flags`. `Ok(None)`: nothing to track (a TCP RST opens no
    /// connection). Refused when every entry is live.
    pub fn insert(
        &mut self,
        k: &FlowKey,
        flags: u8,
        now: u64,
        tag: Tag,
    ) -> Result<Option<Handle>, Full> {
        let Some((state, fins)) = initial_state(k.proto, flags) else {
            return Ok(None);
        };
        let (key, src_lo) = Key::of(k);
        let hash = key.hash(self.seed);
        // A duplicate (the caller inserted after a miss, so only after a
        // bug) replaces the old entry rather than shadowing it.
        {
            let entries = &self.entries;
            if let Some(&slot) = self.index.find(hash, |&i| entries[i as usize].key == key) {
                self.remove_slot(slot);
            }
        }
        self.sweep(now, SWEEP_ON_INSERT);
        if self.len() >= self.capacity {
            self.sweep(now, SWEEP_WHEN_FULL);
            if self.len() >= self.capacity {
                self.counters.full += 1;
                return Err(Full {
                    capacity: self.capacity,
                });
            }
        }
        let e = Entry {
            key,
            live: true,
            orig_lo: src_lo,
            state,
            fins,
            snapshot: tag.snapshot,
            expires: now.saturating_add(self.timeout(state)),
        };
        let gens = (tag.gen_lo, tag.gen_hi);
        let slot = match self.free.pop() {
            Some(s) => {
                self.entries[s as usize] = e;
                self.gens[s as usize] = gens;
                s
            }
            None => {
                self.entries.push(e);
                self.gens.push(gens);
                self.entries.len() as u32 - 1
            }
        };
        let (entries, seed) = (&self.entries, self.seed);
        self.index
            .insert_unique(hash, slot, |&i| entries[i as usize].key.hash(seed));
        self.counters.inserts += 1;
        self.counters.entries += 1;
        Ok(Some(Handle(slot)))
    }

    /// The owner's tag of an entry.
    #[inline]
    pub fn tag(&self, h: Handle) -> Option<Tag> {
        let e = self.entries.get(h.0 as usize).filter(|e| e.live)?;
        let (gen_lo, gen_hi) = self.gens.get(h.0 as usize).copied().unwrap_or_default();
        Some(Tag {
            snapshot: e.snapshot,
            gen_lo,
            gen_hi,
        })
    }

    #[inline]
    pub fn set_tag(&mut self, h: Handle, tag: Tag) {
        if let Some(e) = self.entries.get_mut(h.0 as usize).filter(|e| e.live) {
            e.snapshot = tag.snapshot;
            if let Some(g) = self.gens.get_mut(h.0 as usize) {
                *g = (tag.gen_lo, tag.gen_hi);
            }
        }
    }

    /// The addresses of an entry's normalised key, lower first (what
    /// [`Tag::gen_lo`] and [`Tag::gen_hi`] refer to).
    pub fn addresses(&self, h: Handle) -> Option<(u32, u32)> {
        self.entries
            .get(h.0 as usize)
            .filter(|e| e.live)
            .map(|e| (e.key.lo, e.key.hi))
    }

    /// The entry as its first packet went, with its state.
    pub fn info(&self, h: Handle) -> Option<EntryInfo> {
        let e = self.entries.get(h.0 as usize).filter(|e| e.live)?;
        let k = &e.key;
        let lo_first = FlowKey {
            src: k.lo,
            dst: k.hi,
            sport: k.lo_port,
            dport: k.hi_port,
            proto: k.proto,
        };
        Some(EntryInfo {
            orig: if e.orig_lo {
                lo_first
            } else {
                lo_first.reversed()
            },
            state: e.state,
            tag: self.tag(h).unwrap_or_default(),
            expires: e.expires,
        })
    }

    /// The entry of a flow (either direction), without touching it.
    pub fn get(&self, k: &FlowKey) -> Option<EntryInfo> {
        let (key, _) = Key::of(k);
        let entries = &self.entries;
        let slot = *self
            .index
            .find(key.hash(self.seed), |&i| entries[i as usize].key == key)?;
        self.info(Handle(slot))
    }

    /// Removes an entry (stale, or reopened).
    pub fn remove(&mut self, h: Handle) {
        if self.entries.get(h.0 as usize).is_some_and(|e| e.live) {
            self.remove_slot(h.0);
        }
    }

    fn remove_slot(&mut self, slot: u32) {
        let hash = self.entries[slot as usize].key.hash(self.seed);
        if let Ok(o) = self.index.find_entry(hash, |&i| i == slot) {
            o.remove();
        }
        self.entries[slot as usize] = FREE;
        self.free.push(slot);
        self.counters.entries -= 1;
        self.counters.removed += 1;
    }

    /// Removes every entry with `ip` at either end; returns how many. Scans
    /// the whole table: for when a pod goes away and no address generation
    /// is available (see `PolicyTables`).
    pub fn flush_ip(&mut self, ip: Ipv4Addr) -> usize {
        let ip = u32::from(ip);
        let mut n = 0;
        for slot in 0..self.entries.len() {
            let e = &self.entries[slot];
            if e.live && (e.key.lo == ip || e.key.hi == ip) {
                self.remove_slot(slot as u32);
                n += 1;
            }
        }
        n
    }

    /// Checks up to `budget` slots from where the last sweep stopped and
    /// removes the entries idle past their timeout; returns how many.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let n = self.entries.len();
        if n == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            if self.hand >= n {
                self.hand = 0;
            }
            let slot = self.hand;
            self.hand += 1;
            let e = &self.entries[slot];
            if e.live && e.expires <= now {
                self.remove_slot(slot as u32);
                self.counters.removed -= 1;
                self.counters.evictions += 1;
                removed += 1;
            }
        }
        removed
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.counters.entries as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes reserved for the table.
    pub fn memory(&self) -> usize {
        self.index.allocation_size()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.gens.capacity() * 8
            + self.free.capacity() * 4
    }

    /// Every live entry (operators, tests).
    pub fn iter(&self) -> impl Iterator<Item = EntryInfo> + '_ {
        (0..self.entries.len()).filter_map(|i| self.info(Handle(i as u32)))
    }
}

/// Shards of a [`SharedTable`] unless told otherwise: enough that workers
/// rarely meet on one lock, few enough that each keeps a useful size.
pub const DEFAULT_SHARDS: usize = 64;

/// One shard, on its own cache lines so workers locking neighbouring shards
/// do not contend for one line.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Table>);

/// The node's connection table when several workers enforce policy: the
/// workers' [`Table`]s joined into one, split in shards each behind its own
/// lock. A flow's shard is chosen by [`symmetric_hash`], so both directions
/// of a connection find one entry whichever worker sees them.
///
/// [`Config::capacity`] is for the whole table, split evenly between the
/// shards (rounded up); a shard full of live entries refuses new flows on its
/// own.
#[derive(Debug)]
pub struct SharedTable {
    shards: Box<[Shard]>,
    /// `shards.len() - 1` (a power of two).
    mask: usize,
    /// Set once a worker has been elected to report the counters.
    reporter: AtomicBool,
}

impl SharedTable {
    /// A table of `cfg.capacity` entries in `shards` shards (rounded up to a
    /// power of two, between 1 and 4096), all memory reserved.
    pub fn new(cfg: Config, shards: usize) -> SharedTable {
        let n = shards.clamp(1, 4096).next_power_of_two();
        let per_shard = Config {
            capacity: cfg.capacity.div_ceil(n).max(1),
            ..cfg
        };
        SharedTable {
            shards: (0..n)
                .map(|_| Shard(Mutex::new(Table::new(per_shard))))
                .collect(),
            mask: n - 1,
            reporter: AtomicBool::new(false),
        }
    }

    /// The shard of a flow (either direction), locked. A shard whose holder
    /// panicked is used as it is: a half-done operation at worst loses or
    /// miscounts one entry, where refusing the shard would cut its flows.
    #[inline]
    pub fn shard(&self, k: &FlowKey) -> MutexGuard<'_, Table> {
        // The high half: the table's own index uses its seeded hash, so the
        // two stay independent either way.
        let i = (symmetric_hash(k) >> 32) as usize & self.mask;
        lock(&self.shards[i].0)
    }

    /// True for the first caller only: the one worker that reports the
    /// table's counters.
    pub fn elect_reporter(&self) -> bool {
        // Relaxed: the flag publishes nothing; only its atomicity matters.
        !self.reporter.swap(true, Ordering::Relaxed)
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Entries the table holds at most (the shards' capacities summed).
    pub fn capacity(&self) -> usize {
        self.each(|t| t.capacity()).sum()
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.each(|t| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shards' counters summed.
    pub fn counters(&self) -> Counters {
        self.each(|t| *t.counters())
            .fold(Counters::default(), |a, c| Counters {
                entries: a.entries + c.entries,
                inserts: a.inserts + c.inserts,
                evictions: a.evictions + c.evictions,
                removed: a.removed + c.removed,
                full: a.full + c.full,
            })
    }

    /// The entry of a flow (either direction), without touching it.
    pub fn get(&self, k: &FlowKey) -> Option<EntryInfo> {
        self.shard(k).get(k)
    }

    /// Removes every entry with `ip` at either end, shard by shard; returns
    /// how many.
    pub fn flush_ip(&self, ip: Ipv4Addr) -> usize {
        self.each(|t| t.flush_ip(ip)).sum()
    }

    /// [`Table::sweep`] on every shard with `budget` slots each; returns how
    /// many entries were removed.
    pub fn sweep(&self, now: u64, budget: usize) -> usize {
        self.each(|t| t.sweep(now, budget)).sum()
    }

    /// Bytes reserved for the table.
    pub fn memory(&self) -> usize {
        self.each(|t| t.memory()).sum::<usize>() + std::mem::size_of_val(&*self.shards)
    }

    /// Runs `f` on each shard in turn, holding one lock at a time.
    fn each<'a, R: 'a>(
        &'a self,
        mut f: impl FnMut(&mut Table) -> R + 'a,
    ) -> impl Iterator<Item = R> + 'a {
        self.shards.iter().map(move |s| f(&mut lock(&s.0)))
    }
}

#[inline]
fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Advances an entry with a packet.
#[inline(always)]
fn step(e: &mut Entry, timeouts: &[u64; 10], dir: Dir, flags: u8, now: u64) -> Update {
    let state = match e.state {
        State::UdpUnreplied | State::UdpReplied => {
            if dir == Dir::Reply {
                State::UdpReplied
            } else {
                e.state
            }
        }
        State::Icmp | State::Other => e.state,
        s => match tcp_step(s, &mut e.fins, dir, flags) {
            Some(s) => s,
            None => return Update::Reopen,
        },
    };
    e.state = state;
    e.expires = now.saturating_add(timeouts[state as usize]);
    Update::Tracked
}

/// The state a connection starts in, or `None` when the packet opens none.
fn initial_state(proto: u8, flags: u8) -> Option<(State, u8)> {
    Some(match proto {
        6 if flags & RST != 0 => return None,
        6 if flags & SYN != 0 && flags & ACK == 0 => (State::TcpSynSent, 0),
        // Picked up mid-stream (Linux's default "loose" pickup): the policy
        // allowed this direction, so its replies are replies.
        6 if flags & FIN != 0 => (State::TcpFinWait, 1),
        6 => (State::TcpEstablished, 0),
        17 => (State::UdpUnreplied, 0),
        1 => (State::Icmp, 0),
        _ => (State::Other, 0),
    })
}

/// One TCP transition; `None` when a closed connection's tuple is reopened.
#[inline]
fn tcp_step(s: State, fins: &mut u8, dir: Dir, flags: u8) -> Option<State> {
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    if matches!(s, State::TcpTimeWait | State::TcpClose) && syn && !ack {
        return None;
    }
    if flags & RST != 0 {
        return Some(State::TcpClose);
    }
    if flags & FIN != 0 && !matches!(s, State::TcpTimeWait | State::TcpClose) {
        *fins |= if dir == Dir::Orig { 1 } else { 2 };
        return Some(if *fins == 3 {
            State::TcpTimeWait
        } else {
            State::TcpFinWait
        });
    }
    Some(match (s, dir) {
        (State::TcpSynSent, Dir::Reply) if syn => State::TcpSynRecv,
        (State::TcpSynRecv, Dir::Orig) if ack && !syn => State::TcpEstablished,
        (s, _) => s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            src: u32::from(Ipv4Addr::from(src)),
            dst: u32::from(Ipv4Addr::from(dst)),
            sport,
            dport,
            proto: 6,
        }
    }

    fn step(t: &mut Table, k: &FlowKey, flags: u8, now: u64) -> (Dir, State) {
        let (h, d) = t.lookup(k, now).expect("tracked");
        assert_eq!(t.update(h, d, flags, now), Update::Tracked);
        (d, t.get(k).unwrap().state)
    }

    #[test]
    fn tcp_handshake_and_close() {
        let mut t = Table::new(Config::default());
        let c = tcp([198, 19, 1, 10], 40000, [198, 19, 2, 10], 80);
        let s = c.reversed();
        t.insert(&c, SYN, 0, Tag::default()).unwrap().unwrap();
        assert_eq!(t.get(&s).unwrap().state, State::TcpSynSent);
        assert_eq!(t.get(&s).unwrap().orig, c);
        assert_eq!(
            step(&mut t, &s, SYN | ACK, 1),
            (Dir::Reply, State::TcpSynRecv)
        );
        assert_eq!(step(&mut t, &c, ACK, 2), (Dir::Orig, State::TcpEstablished));
        assert_eq!(step(&mut t, &s, ACK, 3).1, State::TcpEstablished);
        let est = t.get(&c).unwrap().expires;
        assert_eq!(est, 3 + 7440 * SEC);
        assert_eq!(step(&mut t, &c, FIN | ACK, 4).1, State::TcpFinWait);
        assert_eq!(step(&mut t, &c, FIN | ACK, 4).1, State::TcpFinWait);
        assert_eq!(step(&mut t, &s, FIN | ACK, 5).1, State::TcpTimeWait);
        assert_eq!(t.get(&c).unwrap().expires, 5 + 120 * SEC);
        // A new SYN on the old tuple is a new connection.
        let (h, d) = t.lookup(&c, 6).unwrap();
        assert_eq!(t.update(h, d, SYN, 6), Update::Reopen);
        // RST closes at once, then times out after 10 s.
        let (h, d) = t.lookup(&s, 7).unwrap();
        assert_eq!(t.update(h, d, RST | ACK, 7), Update::Tracked);
        assert_eq!(t.get(&c).unwrap().state, State::TcpClose);
        assert!(t.lookup(&c, 7 + 10 * SEC).is_none());
        assert_eq!(t.counters().evictions, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn pickups_and_timeouts() {
        let mut t = Table::new(Config::default());
        let k = tcp([1, 1, 1, 1], 1000, [2, 2, 2, 2], 22);
        // An RST opens nothing; a mid-stream ACK is picked up as established.
        assert_eq!(t.insert(&k, RST, 0, Tag::default()), Ok(None));
        t.insert(&k, ACK, 0, Tag::default()).unwrap().unwrap();
        assert_eq!(t.get(&k).unwrap().state, State::TcpEstablished);
        // An unanswered SYN lives 120 s.
        let syn = tcp([1, 1, 1, 1], 1001, [2, 2, 2, 2], 22);
        t.insert(&syn, SYN, 0, Tag::default()).unwrap();
        assert!(t.lookup(&syn, 120 * SEC - 1).is_some());
        assert!(t.lookup(&syn, 120 * SEC).is_none());
        // UDP: 30 s until answered, 120 s after.
        let u = FlowKey { proto: 17, ..k };
        t.insert(&u, 0, 0, Tag::default()).unwrap().unwrap();
        assert_eq!(t.get(&u).unwrap().expires, 30 * SEC);
        assert_eq!(
            step(&mut t, &u.reversed(), 0, SEC),
            (Dir::Reply, State::UdpReplied)
        );
        assert_eq!(t.get(&u).unwrap().expires, 121 * SEC);
        let i = FlowKey {
            proto: 1,
            sport: 7,
            dport: 7,
            ..k
        };
        t.insert(&i, 0, 0, Tag::default()).unwrap().unwrap();
        assert_eq!(step(&mut t, &i.reversed(), 0, 1).0, Dir::Reply);
        assert_eq!(t.get(&i).unwrap().state, State::Icmp);
    }

    #[test]
    fn full_table_refuses_then_sweeps() {
        let mut t = Table::new(Config {
            capacity: 4,
            timeouts: Timeouts::default(),
        });
        for p in 0..4 {
            let k = FlowKey {
                proto: 17,
                ..tcp([1, 1, 1, 1], p, [2, 2, 2, 2], 53)
            };
            t.insert(&k, 0, 0, Tag::default()).unwrap();
        }
        let k = FlowKey {
            proto: 17,
            ..tcp([1, 1, 1, 1], 9, [2, 2, 2, 2], 53)
        };
        assert_eq!(
            t.insert(&k, 0, SEC, Tag::default()),
            Err(Full { capacity: 4 })
        );
        assert_eq!(t.counters().full, 1);
        // After 30 s the unanswered UDP entries are idle: the insert sweeps
        // a few of them (amortised), an explicit sweep the rest.
        assert!(t.insert(&k, 0, 31 * SEC, Tag::default()).unwrap().is_some());
        assert_eq!((t.len(), t.counters().evictions), (3, 2));
        assert_eq!(t.sweep(31 * SEC, 100), 2);
        assert_eq!((t.len(), t.counters().evictions), (1, 4));
        assert!(t.get(&k).is_some());
        assert!(t.memory() > 0);
    }

    #[test]
    fn flush_and_tags() {
        let mut t = Table::new(Config::default());
        let a = tcp([198, 19, 1, 10], 1, [198, 19, 2, 10], 80);
        let b = tcp([198, 19, 2, 10], 2, [198, 19, 1, 11], 80);
        let c = tcp([198, 19, 1, 11], 3, [198, 19, 1, 12], 80);
        let tag = Tag {
            snapshot: 5,
            gen_lo: 1,
            gen_hi: 2,
        };
        let h = t.insert(&a, SYN, 0, tag).unwrap().unwrap();
        t.insert(&b, SYN, 0, tag).unwrap();
        t.insert(&c, SYN, 0, tag).unwrap();
        assert_eq!(t.tag(h), Some(tag));
        assert_eq!(
            t.addresses(h),
            Some((u32::from(Ipv4Addr::new(198, 19, 1, 10)), a.dst))
        );
        assert_eq!(t.flush_ip(Ipv4Addr::new(198, 19, 2, 10)), 2);
        assert_eq!(t.tag(h), None);
        assert!(t.get(&c).is_some() && t.len() == 1);
        // A stale handle is harmless.
        t.remove(h);
        assert_eq!(t.update(h, Dir::Orig, ACK, 0), Update::Reopen);
        assert_eq!(t.iter().count(), 1);
        assert_eq!(symmetric_hash(&a), symmetric_hash(&a.reversed()));
    }

    #[test]
    fn shared_table_splits_and_joins() {
        let s = SharedTable::new(
            Config {
                capacity: 100,
                timeouts: Timeouts::default(),
            },
            5,
        );
        assert_eq!((s.shards(), s.capacity()), (8, 8 * 13));
        // Both directions of a connection find its one entry.
        let a = tcp([198, 19, 1, 10], 1, [198, 19, 2, 10], 80);
        s.shard(&a).insert(&a, SYN, 0, Tag::default()).unwrap();
        assert_eq!(s.shard(&a.reversed()).get(&a.reversed()).unwrap().orig, a);
        assert_eq!(s.get(&a.reversed()).unwrap().orig, a);
        for p in 2..50 {
            let k = tcp([198, 19, 2, 10], 80, [198, 19, 1, 10], p);
            s.shard(&k).insert(&k, SYN, 0, Tag::default()).unwrap();
        }
        let u = FlowKey {
            proto: 17,
            ..tcp([198, 19, 1, 11], 1, [198, 19, 3, 10], 53)
        };
        s.shard(&u).insert(&u, 0, 0, Tag::default()).unwrap();
        assert_eq!(s.len(), 50);
        assert_eq!(s.counters().inserts, 50);
        // Spread: no shard holds them all.
        assert!(s.shards.iter().all(|sh| lock(&sh.0).len() < 50));
        assert_eq!(s.flush_ip(Ipv4Addr::new(198, 19, 2, 10)), 49);
        // The UDP entry idles out after 30 s.
        assert_eq!(s.sweep(31 * SEC, 100), 1);
        assert!(s.is_empty());
        let c = s.counters();
        assert_eq!((c.entries, c.removed, c.evictions), (0, 49, 1));
        assert!(s.elect_reporter() && !s.elect_reporter());
        assert!(s.memory() > 0);
        // Degenerate sizes still make a usable table.
        let one = SharedTable::new(
            Config {
                capacity: 0,
                timeouts: Timeouts::default(),
            },
            0,
        );
        assert_eq!((one.shards(), one.capacity()), (1, 1));
    }
}
