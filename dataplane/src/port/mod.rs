//! Ports: where packets enter and leave a worker. One trait for every kind; the
//! pipeline never sees which one it is.
//!
//! [`MemPort`] keeps frames in memory for tests and benches; the TAP, AF_XDP and
//! kernel-socket ports live in their own modules.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use crate::buf::{Batch, Pool};

pub mod gro;
pub mod gso;
pub mod packet;
pub mod tap;
pub mod xdp;

/// A source and sink of Ethernet frames, driven in batches.
pub trait Port {
    /// A short name for logs and counters (`eth0`, `tap3f2a`).
    fn name(&self) -> &str;

    /// Receives up to `max` frames into packets taken from `pool`, appended to
    /// `batch`. Returns how many arrived, a superframe counting as the segments
    /// it carries (so a burst is about the same work whatever the frames); 0
    /// when none are waiting (never blocks).
    fn rx_burst(&mut self, pool: &mut Pool, batch: &mut Batch, max: usize) -> io::Result<usize>;

    /// Sends every packet of `batch`, which is left empty: packets go back to `pool`
    /// whether sent or not. Returns how many were sent; the rest were refused by the
    /// device (queue full, interface down) and are the caller's to count.
    fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize>;

    /// Whether [`Port::tx_burst`] takes TCP superframes
    /// ([`crate::buf::Meta::gso_size`]) and sends them whole or cuts them
    /// itself. Default: no, and the worker cuts them into segments first.
    fn takes_superframes(&self) -> bool {
        false
    }

    /// Whether what [`Port::tx_burst`] sends is read by a task on this
    /// machine that may share the worker's CPU: a pod's network stack and
    /// application behind a TAP, or the node's. After a round that sent to
    /// such a port the worker yields its CPU (see
    /// [`crate::runtime::RuntimeConfig::yield_on_delivery`]). Default: no (an
    /// uplink's reader is another machine).
    fn feeds_local_reader(&self) -> bool {
        false
    }

    /// A file descriptor that becomes readable when frames wait, for sleeping in
    /// epoll when idle; `None` for ports that cannot wake a sleeper.
    fn rx_fd(&self) -> Option<RawFd> {
        None
    }

    /// The port's own counters of offloads and of frames it dropped before the
    /// pipeline saw them. Default: none.
    fn offload_stats(&self) -> PortOffload {
        PortOffload::default()
    }

    /// Reads the kernel's counters of the port's socket or device into what
    /// [`Port::offload_stats`] reports ([`PortOffload::rx_kernel_drops`]): a
    /// system call or a few, made when the worker publishes its stats (at
    /// most every 100 ms, and for a bounded number of pod ports at a time),
    /// not per burst. Default: nothing to read.
    fn update_kernel_stats(&mut self) {}

    /// Removes the device behind the port for good (a persistent TAP is
    /// otherwise kept when the port is dropped). Default: just drop.
    fn destroy(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

/// Counters a port keeps itself: segmentation and receive offload, and frames
/// it dropped before the pipeline saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortOffload {
    /// Superframes received (GSO): handed to the pipeline whole, or cut into
    /// segments where they cannot travel whole (VXLAN's UDP superframes).
    pub rx_gso_superframes: u64,
    /// Segments they carry.
    pub rx_gso_segments: u64,
    /// Of the superframes received, those cut into frames because they could
    /// not travel whole: UDP superframes other than VXLAN pieces of one TCP
    /// flow (those become one packet carrying a TCP superframe).
    pub rx_gso_cut: u64,
    /// Superframes sent: joined from a run of segments (GRO), or received
    /// whole and sent on whole.
    pub tx_gro_superframes: u64,
    /// Segments in them.
    pub tx_gro_segments: u64,
    /// Frames dropped on receive: longer than a buffer, a bad virtio-net header,
    /// or a superframe that could not be cut.
    pub rx_dropped: u64,
    /// Frames the kernel dropped before the port could read them: its socket's
    /// receive queue full (`AF_PACKET`), its RX ring full or fill ring empty
    /// (AF_XDP), or the device's queue full (a TAP: what a pod sent faster
    /// than the worker read). As of the last [`Port::update_kernel_stats`].
    pub rx_kernel_drops: u64,
}

/// A port whose wire is two queues in memory: tests push frames into `rx` and read
/// what the pipeline sent from `tx`.
#[derive(Debug, Default)]
pub struct MemPort {
    name: String,
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
}

impl MemPort {
    pub fn new(name: &str) -> MemPort {
        MemPort {
            name: name.to_owned(),
            ..Default::default()
        }
    }
}

impl Port for MemPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, pool: &mut Pool, batch: &mut Batch, max: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < max && !batch.is_full() {
            let Some(frame) = self.rx.front() else { break };
            let Some(mut p) = pool.alloc() else { break };
            if !p.load(frame) {
                // Longer than a buffer: a real NIC would not deliver it either.
                pool.free(p);
                self.rx.pop_front();
                continue;
            }
            self.rx.pop_front();
            batch.push(p);
            n += 1;
        }
        Ok(n)
    }

    fn tx_burst(&mut self, pool: &mut Pool, batch: &mut Batch) -> io::Result<usize> {
        let n = batch.len();
        for p in batch.drain() {
            self.tx.push_back(p.data().to_vec());
            pool.free(p);
        }
        Ok(n)
    }
}
