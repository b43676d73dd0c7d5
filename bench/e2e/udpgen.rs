//! `e2e-udpgen`: the 64-byte UDP load of `scripts/bench-e2e` from a sender
//! that is not the bottleneck.
//!
//! `iperf3 -u` makes one `sendmsg(2)` per datagram and checks the clock
//! between them; where the path is cheaper than that (the kernel rows, whose
//! forwarding runs in the sender's system call) iperf3 measures itself. This
//! sends batches of datagrams with one `sendmmsg(2)` each and counts them with
//! `recvmmsg(2)` (the dataplane's [`Mmsg`]); every datagram carries a sequence
//! number, so the receiver knows how many were sent without being told.
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
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use sluice_dataplane::sys::packet::Mmsg;

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

#[derive(Debug, Default, PartialEq)]
struct SendReport {
    sent: u64,
    errors: u64,
    seconds: f64,
}

/// Waits up to 100 ms for `sock` to be ready for `what`.
fn wait_ready(sock: &UdpSocket, what: PollFlags) {
    let mut fds = [PollFd::new(sock.as_fd(), what)];
    // An error (EINTR) or a timeout: the caller looks at the clock and tries again.
    let _ = poll(&mut fds, PollTimeout::from(100u8));
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
    let mut bufs = vec![0u8; batch * size];
    let mut mmsg = Mmsg::new(batch);
    let mut r = SendReport::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    // With --rate: when the next batch is due.
    let interval = rate.map(|pps| Duration::from_secs_f64(batch as f64 / pps as f64));
    let mut due = start;
    while Instant::now() < end {
        if let Some(step) = interval {
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            }
            due += step;
        }
        for (i, d) in bufs.chunks_mut(size).enumerate() {
            d[..SEQ_LEN].copy_from_slice(&(r.sent + i as u64).to_le_bytes());
        }
        let mut off = 0;
        while off < batch && Instant::now() < end {
            match mmsg.send(sock.as_fd(), bufs.chunks(size).skip(off)) {
                Ok(n) => {
                    off += n;
                    r.sent += n as u64;
                }
                // The socket's send buffer is full: wait for room.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_ready(&sock, PollFlags::POLLOUT)
                }
                // ECONNREFUSED: an ICMP error for an earlier datagram (the
                // receiver not up yet); ENOBUFS: a full device queue. Count,
                // and go on with the next batch.
                Err(_) => {
                    r.errors += 1;
                    break;
                }
            }
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

/// Datagrams per `recvmmsg`, and the room for each.
const RECV_BATCH: usize = 256;
const RECV_ROOM: usize = 2048;

fn recv(addr: SocketAddrV4, secs: u64) -> Result<RecvReport, GenError> {
    let err = |what| move |source| GenError::Socket { what, addr, source };
    let sock = UdpSocket::bind(addr).map_err(err("bind"))?;
    // A deep queue so that a descheduled receiver does not lose what the path
    // delivered (root may exceed rmem_max; otherwise the plain option applies).
    let bytes = 16 << 20;
    if setsockopt(&sock, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &bytes);
    }
    let mut bufs = vec![0u8; RECV_BATCH * RECV_ROOM];
    let mut mmsg = Mmsg::new(RECV_BATCH);
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
        let n = match mmsg.recv(sock.as_fd(), bufs.chunks_mut(RECV_ROOM)) {
            Ok(n) if n > 0 => n,
            _ => {
                // Nothing waiting: sleep until something is, or look at the
                // clock again after 100 ms.
                wait_ready(&sock, PollFlags::POLLIN);
                continue;
            }
        };
        let t = Instant::now();
        first.get_or_insert(t);
        last = t;
        for (i, d) in bufs.chunks(RECV_ROOM).take(n).enumerate() {
            r.received += 1;
            let len = mmsg.received(i).map_or(0, |m| m.len);
            if len >= SEQ_LEN {
                let seq = u64::from_le_bytes(d[..SEQ_LEN].try_into().expect("SEQ_LEN bytes"));
                r.sent_seen = r.sent_seen.max(seq.saturating_add(1));
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
