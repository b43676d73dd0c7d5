//! The HTTP side of the metrics endpoint, kept small on purpose: one thread,
//! one connection at a time, `Connection: close`, a read timeout and a bounded
//! request head. `GET /metrics` (or `HEAD`) answers 200 with what the body
//! function renders; any other path 404, any other method 405.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{MetricsError, CONTENT_TYPE};

/// The longest request head accepted (request line and headers).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The running endpoint; stops its thread when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load after each accept.
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own; if that
        // fails the thread is left to end with the process.
        let ip = match self.addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woke = TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), READ_TIMEOUT)
            .is_ok();
        if let (true, Some(t)) = (woke, self.thread.take()) {
            let _ = t.join();
        }
    }
}

/// Serves `GET /metrics` with whatever `body` renders.
pub(super) fn serve_with<F>(listen: SocketAddr, body: F) -> Result<MetricsServer, MetricsError>
where
    F: Fn() -> Result<String, MetricsError> + Send + 'static,
{
    let listener = TcpListener::bind(listen).map_err(|source| MetricsError::Bind {
        addr: listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| MetricsError::Io {
        addr: listen,
        what: "reading the bound address",
        source,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || accept_loop(&listener, &flag, &body))
        .map_err(|source| MetricsError::Io {
            addr,
            what: "starting its thread",
            source,
        })?;
    Ok(MetricsServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop<F>(listener: &TcpListener, stop: &AtomicBool, body: &F)
where
    F: Fn() -> Result<String, MetricsError>,
{
    for conn in listener.incoming() {
        // Acquire: pairs with the Release store in MetricsServer::drop.
        if stop.load(Ordering::Acquire) {
            return;
        }
        match conn {
            Ok(s) => {
                if let Err(e) = handle(s, body) {
                    tracing::debug!(error = %e, "metrics client");
                }
            }
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`head`: a HEAD request, no body sent).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Reads the request head: up to the blank line, at most
/// [`MAX_REQUEST_HEAD`] bytes, within [`READ_TIMEOUT`] in all (a client
/// trickling bytes cannot hold the endpoint longer). `None` when too large.
fn read_head(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete in time",
            ));
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the request head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

/// Routes a request head (the request line decides; headers are ignored).
fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Route::BadRequest;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

fn handle<F>(mut s: TcpStream, body: &F) -> io::Result<()>
where
    F: Fn() -> Result<String, MetricsError>,
{
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let route = match read_head(&mut s)? {
        Some(head) => route(&head),
        None => Route::TooLarge,
    };
    let (status, ctype, text, head_only) = match route {
        Route::Metrics { head } => match body() {
            Ok(b) => ("200 OK", CONTENT_TYPE, b, head),
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint");
                (
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    format!("{e}\n"),
                    head,
                )
            }
        },
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
            false,
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "expected GET or HEAD\n".to_owned(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "expected an HTTP/1.x request line\n".to_owned(),
            false,
        ),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            format!("request head over {MAX_REQUEST_HEAD} bytes\n"),
            false,
        ),
    };
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        text.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(text.as_bytes());
    }
    s.write_all(&out)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(
            route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Route::BadRequest
        );
        assert_eq!(route(b""), Route::BadRequest);
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may answer (431) and close before taking all of a huge request.
        let _ = s.write_all(request);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_over_http() {
        let server = serve_with("127.0.0.1:0".parse().unwrap(), || Ok("m 1\n".to_owned())).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");

        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(exchange(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let post = exchange(addr, b"PUT /metrics HTTP/1.1\r\n\r\n");
        assert!(
            post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD"),
            "{post}"
        );
        assert!(exchange(addr, b"hello\r\n\r\n").starts_with("HTTP/1.1 400 "));
        // Exactly one byte over: the server has read all of it when it answers
        // (unread bytes at close would reset the connection under the answer).
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST_HEAD + 1, b'a');
        assert!(exchange(addr, &big).starts_with("HTTP/1.1 431 "));

        // A client that trickles its request a byte at a time is cut off
        // when the whole head is late, and the server goes on serving.
        let mut slow = TcpStream::connect(addr).unwrap();
        let trickle = std::thread::spawn(move || {
            for b in b"GET /metrics HTTP/1.1\r\nX: y\r\n" {
                if slow.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            t.elapsed() < READ_TIMEOUT + Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
        trickle.join().unwrap();

        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after drop"
        );
    }

    #[test]
    fn render_failure_answers_500() {
        let server =
            serve_with("127.0.0.1:0".parse().unwrap(), || Err(MetricsError::Encode)).unwrap();
        let out = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 500 "), "{out}");
    }

    #[test]
    fn bind_conflict_names_the_address() {
        let first = serve_with("127.0.0.1:0".parse().unwrap(), || Ok(String::new())).unwrap();
        let err = serve_with(first.local_addr(), || Ok(String::new())).unwrap_err();
        assert!(matches!(err, MetricsError::Bind { addr, .. } if addr == first.local_addr()));
        assert!(
            err.to_string().contains(&first.local_addr().to_string()),
            "{err}"
        );
    }
}
