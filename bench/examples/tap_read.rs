//! What one frame read from a TAP costs, by `readv(2)` per frame (as
//! [`sluice_dataplane::port::tap::Tap`] reads) and by io_uring: a multishot
//! read (`IORING_OP_READ_MULTISHOT`, Linux 6.7) into a provided-buffer ring,
//! where one `io_uring_enter(2)` takes every frame waiting. Run it through
//! `scripts/bench-tap-read`, which gives it a network namespace of its own;
//! it refuses to run in the host's.
//!
//! Both methods busy-poll, as a worker does: `readv` until `EAGAIN`, or
//! `io_uring_enter(GETEVENTS)` without waiting. First each polls the idle TAP
//! for a while, which prices one empty poll. Then a sender thread on CPU 0
//! floods 64-byte UDP datagrams (`sendmmsg(2)`, 64 at a time) out of the TAP
//! and the reader on CPU 1 reads them for `secs` seconds. Printed per
//! method: frames read per second, frames per call, and the reader's CPU time
//! (user + system, `RUSAGE_THREAD`) per frame with the empty polls' share
//! taken out, the figure to compare: what a worker spends per frame it
//! takes from a pod.
//!
//! `cargo run --release -p bench --example tap_read -- [readv|uring|both] [secs]`

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring};
use nix::libc;
use sluice_dataplane::sys::tun;

const TAP: &str = "trd0";
const LOCAL: &str = "198.19.255.1";
const PEER: &str = "198.19.255.2";
/// Frames of up to this many bytes; the flood's are 106.
const BUF: usize = 2048;
/// Buffers in the provided-buffer ring (a power of two).
const RING_BUFS: usize = 512;
const BGID: u16 = 7;
const IORING_ENTER_GETEVENTS: u32 = 1;

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "both".into());
    let secs: u64 = match args.next().map(|s| s.parse()) {
        None => 3,
        Some(Ok(s)) if (1..=60).contains(&s) => s,
        Some(_) => fail("secs: a whole number of seconds, 1 to 60"),
    };
    let methods: &[&str] = match which.as_str() {
        "readv" => &["readv"],
        "uring" => &["uring"],
        "both" => &["readv", "uring"],
        other => fail(&format!("method {other:?}: readv, uring or both")),
    };
    if same_netns_as_init() {
        fail("run it in a network namespace of its own (scripts/bench-tap-read)");
    }
    for m in methods {
        let r = measure(m, Duration::from_secs(secs));
        let busy = r.cpu - r.empty as f64 * r.empty_cost;
        println!(
            "{m:5}  {:7.0} kframes/s  {:5.1} frames/call  {:4.0} ns per empty poll  \
             {:4.0} ns CPU/frame",
            r.frames as f64 / r.wall / 1e3,
            r.frames as f64 / r.calls.max(1) as f64,
            r.empty_cost * 1e9,
            busy * 1e9 / r.frames.max(1) as f64
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("tap_read: {msg}");
    std::process::exit(2)
}

fn same_netns_as_init() -> bool {
    let ns = |p: &str| std::fs::read_link(p).ok();
    ns("/proc/self/ns/net").is_none_or(|me| Some(me) == ns("/proc/1/ns/net"))
}

struct Run {
    frames: u64,
    calls: u64,
    /// Calls that found nothing.
    empty: u64,
    /// CPU seconds of one such call, measured on the idle TAP.
    empty_cost: f64,
    wall: f64,
    cpu: f64,
}

/// Frames read, calls made, calls that found nothing.
type Counts = (u64, u64, u64);

fn measure(method: &str, dur: Duration) -> Run {
    let tap = open_tap(TAP);
    sh(&format!(
        "ip link set {TAP} txqueuelen 4096 up && ip addr add {LOCAL}/24 dev {TAP} && \
         ip neigh replace {PEER} lladdr 02:00:00:00:00:02 dev {TAP}"
    ));
    pin(1);
    let idle = Duration::from_millis(300);
    let cpu0 = thread_cpu();
    let (_, calls, _) = read(method, &tap, Instant::now(), idle);
    let empty_cost = (thread_cpu() - cpu0) / calls.max(1) as f64;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(&stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let (frames, calls, empty) = read(method, &tap, t0, dur);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu0;
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    drop(tap); // the TAP (not persistent) goes with its fd
    Run {
        frames,
        calls,
        empty,
        empty_cost,
        wall,
        cpu,
    }
}

fn read(method: &str, tap: &OwnedFd, t0: Instant, dur: Duration) -> Counts {
    match method {
        "readv" => read_readv(tap, t0, dur),
        _ => read_uring(tap, t0, dur),
    }
}

fn read_readv(tap: &OwnedFd, t0: Instant, dur: Duration) -> Counts {
    let mut buf = vec![0u8; BUF];
    let (mut frames, mut calls, mut empty) = (0u64, 0u64, 0u64);
    while t0.elapsed() < dur {
        for _ in 0..64 {
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: BUF,
            };
            // SAFETY: one iovec over `buf`, which outlives the call.
            let r = unsafe { libc::readv(tap.as_raw_fd(), &iov, 1) };
            calls += 1;
            if r <= 0 {
                empty += 1;
                break;
            }
            frames += 1;
        }
    }
    (frames, calls, empty)
}

/// The provided-buffer ring: `RING_BUFS` entries of `struct io_uring_buf`
/// (addr u64, len u32, bid u16, resv u16); the kernel reads the tail from the
/// first entry's `resv`.
struct BufRing {
    ring: *mut u8,
    layout: std::alloc::Layout,
    bufs: Vec<u8>,
    tail: u16,
}

impl BufRing {
    fn new() -> BufRing {
        let layout = std::alloc::Layout::from_size_align(RING_BUFS * 16, 4096).expect("layout");
        // SAFETY: a non-zero size.
        let ring = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ring.is_null(), "out of memory");
        let mut br = BufRing {
            ring,
            layout,
            bufs: vec![0u8; RING_BUFS * BUF],
            tail: 0,
        };
        for bid in 0..RING_BUFS as u16 {
            br.give(bid);
        }
        br.publish();
        br
    }

    fn give(&mut self, bid: u16) {
        let slot = usize::from(self.tail) & (RING_BUFS - 1);
        // SAFETY: `slot` < RING_BUFS, so the 16 bytes are inside the ring;
        // the buffer address is inside `bufs`, which lives as long as `self`.
        unsafe {
            let e = self.ring.add(slot * 16);
            let addr = self.bufs.as_mut_ptr().add(usize::from(bid) * BUF) as u64;
            e.cast::<u64>().write(addr);
            e.add(8).cast::<u32>().write(BUF as u32);
            e.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail lives at byte 14 of the ring; the release store
        // orders the entries written before it.
        unsafe {
            let tail = &*self.ring.add(14).cast::<std::sync::atomic::AtomicU16>();
            tail.store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ring, self.layout) }
    }
}

fn read_uring(tap: &OwnedFd, t0: Instant, dur: Duration) -> Counts {
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(1024)
        .build(64)
        .expect("io_uring_setup");
    let mut br = BufRing::new();
    // SAFETY: the ring memory stays valid and registered until `ring` is
    // dropped, before `br`.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(br.ring as u64, RING_BUFS as u16, BGID, 0)
            .expect("register buffer ring");
    }
    let read = opcode::ReadMulti::new(types::Fd(tap.as_raw_fd()), 0, BGID)
        .build()
        .user_data(1);
    let (mut frames, mut calls, mut empty) = (0u64, 0u64, 0u64);
    let mut armed = false;
    while t0.elapsed() < dur {
        if !armed {
            // SAFETY: the entry refers to the TAP fd and the registered
            // buffer group, both alive until the loop ends.
            unsafe { ring.submission().push(&read).expect("submission queue") };
            armed = true;
        }
        let to_submit = ring.submission().len() as u32;
        // SAFETY: no argument; GETEVENTS without a minimum runs the
        // completions waiting (DEFER_TASKRUN) and returns at once.
        unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(to_submit, 0, IORING_ENTER_GETEVENTS, None)
                .expect("io_uring_enter");
        }
        calls += 1;
        let before = frames;
        for c in ring.completion() {
            if c.result() > 0 {
                frames += 1;
            } else if c.result() != -libc::ENOBUFS {
                fail(&format!("multishot read: error {}", -c.result()));
            }
            if let Some(bid) = cqueue::buffer_select(c.flags()) {
                br.give(bid);
            }
            if !cqueue::more(c.flags()) {
                armed = false;
            }
        }
        br.publish();
        if frames == before {
            empty += 1;
        }
    }
    drop(ring);
    (frames, calls, empty)
}

fn flood(stop: &AtomicBool) {
    pin(0);
    let s = std::net::UdpSocket::bind(format!("{LOCAL}:0")).expect("bind");
    s.connect(format!("{PEER}:9")).expect("connect");
    let payload = [0x5au8; 64];
    let mut iov: Vec<libc::iovec> = (0..64)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: 64 headers, each over a live iovec over `payload`.
        unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), 64, 0) };
    }
}

fn open_tap(name: &str) -> OwnedFd {
    let fd = tun::open(true).unwrap_or_else(|e| fail(&format!("/dev/net/tun: {e}")));
    tun::set_iff(fd.as_fd(), name, libc::IFF_TAP | libc::IFF_NO_PI)
        .unwrap_or_else(|e| fail(&format!("TUNSETIFF {name}: {e}")));
    fd
}

fn sh(cmd: &str) {
    match Command::new("sh").arg("-c").arg(cmd).status() {
        Ok(s) if s.success() => {}
        other => fail(&format!("{cmd}: {other:?}")),
    }
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn thread_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut r);
        r
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(r.ru_utime) + tv(r.ru_stime)
}
