//! `e2e-udpgen`: the 64-byte UDP load of `scripts/bench-e2e` from a sender
//! that is not the bottleneck.
//!
//! `iperf3 -u` makes one `sendmsg(2)` per datagram and checks the clock
//! between them; where the path is cheaper than that (the kernel rows, whose
//! forwarding runs in the sender's system call) iperf3 measures itself. This
//! sends batches of datagrams with one `sendmmsg(2)` each and counts them with
//! `recvmmsg(2)`; every datagram carries a sequence number, so the receiver
//! knows how many were sent without being told.
//!
//! ```text
//! e2e-udpgen recv ADDR:PORT SECONDS                 # prints one JSON line
//! e2e-udpgen send ADDR:PORT SECONDS [--size BYTES] [--batch N] [--rate PPS]
//! ```
//!
//! The receiver counts from its first datagram until the sender has been quiet
//! for half a second (or SECONDS + 2 have passed since the first datagram), and
//! gives up when nothing arrives within SECONDS + 5. Its rate is the datagrams
//! it got over the time between the first and the last. `--rate` paces the
//! sender (whole batches, so at least one batch per millisecond is advisable);
//! without it the sender sends as fast as its socket takes datagrams.

use std::io;
use std::mem;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::libc;

/// Bytes of the sequence number at the start of each payload.
const SEQ_LEN: usize = 8;
const MAX_BATCH: usize = 1024;
const MAX_SIZE: usize = 65_000;
/// The receiver stops after this long without a datagram, once traffic began.
const QUIET: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
enum GenError {
    #[error("usage: {0}\n\n  e2e-udpgen recv ADDR:PORT SECONDS\n  e2e-udpgen send ADDR:PORT SECONDS [--size BYTES] [--batch N] [--rate PPS]")]
    Usage(String),
    #[error("{what} {addr}: {source}")]
    Socket {
        what: &'static str,
        addr: SocketAddrV4,
        source: io::Error,
    },
    #[error("nothing arrived at {addr} within {secs} s")]
    NoTraffic { addr: SocketAddrV4, secs: u64 },
}

#[derive(Debug, Clone, PartialEq)]
enum Cmd {
    Recv {
        addr: SocketAddrV4,
        secs: u64,
    },
    Send {
        addr: SocketAddrV4,
        secs: u64,
        size: usize,
        batch: usize,
        rate: Option<u64>,
    },
}

fn number<T: std::str::FromStr>(what: &str, s: Option<String>) -> Result<T, GenError> {
    let s = s.ok_or_else(|| GenError::Usage(format!("{what} needs a value")))?;
    s.parse()
        .map_err(|_| GenError::Usage(format!("{what}: {s:?} is not a number")))
}

fn parse(args: Vec<String>) -> Result<Cmd, GenError> {
    let mut it = args.into_iter();
    let mode = it.next().unwrap_or_default();
    let addr = it
        .next()
        .ok_or_else(|| GenError::Usage("missing ADDR:PORT".into()))?;
    let addr: SocketAddrV4 = addr
        .parse()
        .map_err(|_| GenError::Usage(format!("{addr:?} is not an IPv4 ADDR:PORT")))?;
    let secs: u64 = number("SECONDS", it.next())?;
    if !(1..=3600).contains(&secs) {
        return Err(GenError::Usage(format!(
            "SECONDS {secs} is outside 1..=3600"
        )));
    }
    let (mut size, mut batch, mut rate) = (64usize, 64usize, None);
    while let Some(opt) = it.next() {
        match opt.as_str() {
            "--size" => size = number("--size", it.next())?,
            "--batch" => batch = number("--batch", it.next())?,
            "--rate" => rate = Some(number::<u64>("--rate", it.next())?),
            other => return Err(GenError::Usage(format!("unknown option {other:?}"))),
        }
    }
    match mode.as_str() {
        "recv" if size == 64 && batch == 64 && rate.is_none() => Ok(Cmd::Recv { addr, secs }),
        "recv" => Err(GenError::Usage(
            "recv takes no --size, --batch or --rate".into(),
        )),
        "send" => {
            if !(SEQ_LEN..=MAX_SIZE).contains(&size) {
                return Err(GenError::Usage(format!(
                    "--size {size} is outside {SEQ_LEN}..={MAX_SIZE}"
                )));
            }
            if !(1..=MAX_BATCH).contains(&batch) {
                return Err(GenError::Usage(format!(
                    "--batch {batch} is outside 1..={MAX_BATCH}"
                )));
            }
            if rate == Some(0) {
                return Err(GenError::Usage("--rate must be above 0".into()));
            }
            Ok(Cmd::Send {
                addr,
                secs,
                size,
                batch,
                rate,
            })
        }
        other => Err(GenError::Usage(format!(
            "expected recv or send, not {other:?}"
        ))),
    }
}

/// `count` buffers of `size` bytes and the `mmsghdr`s that point at them.
struct Batch {
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    size: usize,
}

impl Batch {
    fn new(count: usize, size: usize) -> Batch {
        let mut b = Batch {
            bufs: vec![0; count * size],
            iovs: Vec::with_capacity(count),
            msgs: Vec::with_capacity(count),
            size,
        };
        for chunk in b.bufs.chunks_mut(size) {
            b.iovs.push(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: size,
            });
        }
        for iov in &mut b.iovs {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            b.msgs.push(m);
        }
        b
    }

    fn set_seq(&mut self, i: usize, seq: u64) {
        let at = i * self.size;
        self.bufs[at..at + SEQ_LEN].copy_from_slice(&seq.to_le_bytes());
    }

    fn seq(&self, i: usize) -> Option<u64> {
        let len = self.msgs[i].msg_len as usize;
        let at = i * self.size;
        (len >= SEQ_LEN).then(|| {
            u64::from_le_bytes(
                self.bufs[at..at + SEQ_LEN]
                    .try_into()
                    .expect("SEQ_LEN bytes"),
            )
        })
    }
}

#[derive(Debug, Default, PartialEq)]
struct SendReport {
    sent: u64,
    errors: u64,
    seconds: f64,
}

fn send(
    addr: SocketAddrV4,
    secs: u64,
    size: usize,
    batch: usize,
    rate: Option<u64>,
) -> Result<SendReport, GenError> {
    let err = |what| move |source| GenError::Socket { what, addr, source };
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(err("bind for"))?;
    sock.connect(addr).map_err(err("connect to"))?;
    let fd = sock.as_raw_fd();
    let mut b = Batch::new(batch, size);
    let mut r = SendReport::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    // With --rate: when the next batch is due.
    let interval = rate.map(|pps| Duration::from_secs_f64(batch as f64 / pps as f64));
    let mut due = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(step) = interval {
            if now < due {
                std::thread::sleep(due - now);
            }
            due += step;
        }
        for i in 0..batch {
            b.set_seq(i, r.sent + i as u64);
        }
        let mut off = 0;
        while off < batch {
            // SAFETY: the messages point into `b.bufs` (via `b.iovs`), which
            // outlive the call; `batch - off` messages from `off` exist.
            let n =
                unsafe { libc::sendmmsg(fd, b.msgs[off..].as_mut_ptr(), (batch - off) as u32, 0) };
            if n < 0 {
                // ECONNREFUSED: an ICMP error for an earlier datagram (the
                // receiver not up yet); ENOBUFS: a full queue. Count and go on.
                r.errors += 1;
                break;
            }
            off += n as usize;
            r.sent += n as u64;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

#[derive(Debug, Default, PartialEq)]
struct RecvReport {
    received: u64,
    /// Highest sequence number seen + 1: how many the sender had sent by then.
    sent_seen: u64,
    seconds: f64,
}

fn recv(addr: SocketAddrV4, secs: u64) -> Result<RecvReport, GenError> {
    let err = |what| move |source| GenError::Socket { what, addr, source };
    let sock = UdpSocket::bind(addr).map_err(err("bind"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(err("timeout on"))?;
    let fd = sock.as_raw_fd();
    // A deep queue so that a descheduled receiver does not lose what the path
    // delivered (root may exceed rmem_max; otherwise the plain option applies).
    let bytes: libc::c_int = 16 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc == 0 {
            break;
        }
    }
    let mut b = Batch::new(MAX_BATCH.min(256), 2048);
    let mut r = RecvReport::default();
    let started = Instant::now();
    let (mut first, mut last) = (None::<Instant>, started);
    loop {
        let now = Instant::now();
        match first {
            None if now.duration_since(started) > Duration::from_secs(secs + 5) => {
                return Err(GenError::NoTraffic {
                    addr,
                    secs: secs + 5,
                })
            }
            Some(f)
                if now.duration_since(last) > QUIET
                    || now.duration_since(f) > Duration::from_secs(secs + 2) =>
            {
                break
            }
            _ => {}
        }
        // SAFETY: as in send(): the messages point into `b.bufs`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                b.msgs.as_mut_ptr(),
                b.msgs.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue; // the read timeout: look at the clock again
        }
        let t = Instant::now();
        first.get_or_insert(t);
        last = t;
        for i in 0..n as usize {
            r.received += 1;
            if let Some(s) = b.seq(i) {
                r.sent_seen = r.sent_seen.max(s.saturating_add(1));
            }
        }
    }
    r.seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(r)
}

fn main() -> ExitCode {
    let cmd = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("e2e-udpgen: {e}");
            return ExitCode::from(2);
        }
    };
    let out = match cmd {
        Cmd::Send {
            addr,
            secs,
            size,
            batch,
            rate,
        } => send(addr, secs, size, batch, rate).map(|r| {
            serde_json::json!({
                "sent": r.sent, "send_errors": r.errors, "seconds": r.seconds,
                "pps": if r.seconds > 0.0 { r.sent as f64 / r.seconds } else { 0.0 },
            })
        }),
        Cmd::Recv { addr, secs } => recv(addr, secs).map(|r| {
            serde_json::json!({
                "received": r.received, "sent_seen": r.sent_seen, "seconds": r.seconds,
                "pps": if r.seconds > 0.0 { r.received as f64 / r.seconds } else { 0.0 },
            })
        }),
    };
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2e-udpgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_both_modes_and_names_what_is_wrong() {
        assert_eq!(
            parse(args("recv 198.19.2.2:5300 4")).unwrap(),
            Cmd::Recv {
                addr: "198.19.2.2:5300".parse().unwrap(),
                secs: 4
            }
        );
        assert_eq!(
            parse(args("send 198.19.2.2:5300 4 --batch 32 --rate 100000")).unwrap(),
            Cmd::Send {
                addr: "198.19.2.2:5300".parse().unwrap(),
                secs: 4,
                size: 64,
                batch: 32,
                rate: Some(100_000)
            }
        );
        for (bad, says) in [
            ("", "missing ADDR:PORT"),
            ("send 198.19.2.2 4", "not an IPv4 ADDR:PORT"),
            ("send 198.19.2.2:5300 four", "SECONDS: \"four\""),
            ("send 198.19.2.2:5300 0", "outside 1..=3600"),
            ("send 198.19.2.2:5300 4 --size 4", "--size 4 is outside"),
            ("send 198.19.2.2:5300 4 --batch 0", "--batch 0 is outside"),
            ("send 198.19.2.2:5300 4 --rate 0", "--rate must be above 0"),
            ("send 198.19.2.2:5300 4 --rate", "--rate needs a value"),
            ("send 198.19.2.2:5300 4 --fast", "unknown option \"--fast\""),
            ("recv 198.19.2.2:5300 4 --batch 8", "recv takes no"),
            ("blast 198.19.2.2:5300 4", "expected recv or send"),
        ] {
            let e = parse(args(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn loopback_datagrams_are_counted_with_their_sequence_numbers() {
        // A port of its own: bind to 0 first to learn a free one.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .map(|a| a.port())
            .unwrap();
        let addr = SocketAddrV4::new([127, 0, 0, 1].into(), port);
        let rx = std::thread::spawn(move || recv(addr, 1));
        // Paced well below what loopback takes, so nothing is lost.
        std::thread::sleep(Duration::from_millis(100));
        let s = send(addr, 1, 64, 16, Some(20_000)).unwrap();
        let r = rx.join().unwrap().unwrap();
        assert!(s.sent >= 10_000 && s.sent <= 24_000, "{s:?}");
        // The first batch may meet no socket yet (ECONNREFUSED comes back on
        // a later call): what arrived is what was sent from then on.
        assert!(r.received > 0 && r.received <= s.sent, "{r:?} {s:?}");
        assert_eq!(r.sent_seen, s.sent, "{r:?} {s:?}");
        assert!(
            r.received + 64 >= s.sent,
            "lost more than a batch: {r:?} {s:?}"
        );
        assert!(r.seconds > 0.5 && r.seconds < 1.5, "{r:?}");
    }

    #[test]
    fn receiver_that_cannot_bind_names_the_address() {
        let hold = UdpSocket::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = hold.local_addr().unwrap() else {
            unreachable!("bound to IPv4")
        };
        let e = recv(addr, 1).unwrap_err().to_string();
        assert!(e.starts_with(&format!("bind {addr}")), "{e}");
    }
}
