//! The sluiced API: messages spoken over the daemon's Unix socket, and a blocking client.
//!
//! # Protocol
//!
//! sluiced listens on a Unix stream socket ([`DEFAULT_SOCKET`] unless configured otherwise).
//!
//! * The client writes one JSON object, a [`Request`], followed by `'\n'`.
//! * The server answers with one JSON object, a [`Response`], followed by `'\n'`.
//! * A connection may carry several request/response pairs in sequence; the server answers
//!   them in order and never sends anything unasked.
//! * A request line longer than [`MAX_REQUEST`] bytes (newline excluded) is refused with
//!   [`code::INVALID_REQUEST`] and the connection is closed.
//! * JSON never contains a raw newline outside strings, and serde_json escapes newlines inside
//!   strings, so `'\n'` always ends a message.
//!
//! Requests are decoded strictly (`deny_unknown_fields`): a misspelt field in a hand-written
//! request is an error, not a silently ignored option. Answers are decoded leniently, because
//! the plugin binary in `/opt/cni/bin` may be older than the daemon that answers it.
//!
//! This module depends on serde, serde_json, thiserror and std only: the CNI plugin links it
//! with `default-features = false`, without the dataplane.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where sluiced listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/sluice/sluiced.sock";

/// Largest request line the server accepts, in bytes, newline excluded.
pub const MAX_REQUEST: usize = 1 << 20;

/// Largest answer line the [`Client`] accepts, in bytes, newline excluded. Operator views of a
/// busy node (endpoints, routes, stats) are larger than any request, hence the larger bound.
pub const MAX_RESPONSE: usize = 64 << 20;

/// How long [`Client::connect`] waits for the connection to be established by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a CNI operation may take from request to answer by default.
pub const CNI_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to sluiced. Serialised as an object whose `"op"` field names the operation, e.g.
/// `{"op":"cni_del","container_id":"c1","ifname":"eth0","pod":{}}` or `{"op":"status"}`.
///
/// Unknown fields are refused for every op that has fields; serde cannot refuse them for the
/// field-less ops (`cni_status`, `status`, `endpoints`, ...), which ignore them.
///
/// Room is left for later operator operations (`trace`, `monitor`, `capture`,
/// `policy_explain`, ...): each becomes one more variant here, with its own answer payload in
/// [`Answer`] where [`Answer::Json`] does not fit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// CNI ADD: create the pod interface and allocate its address. Answer: [`Answer::Attached`].
    CniAdd(CniAttach),
    /// CNI DEL: remove the attachment; succeeds when it is already gone. Answer: [`Answer::Done`].
    CniDel(CniDetach),
    /// CNI CHECK: verify the attachment is as it was set up. Answer: [`Answer::Attached`] with
    /// the attachment as the daemon holds it, or [`Answer::Done`].
    CniCheck(CniAttach),
    /// CNI STATUS: can the daemon serve ADD now? Answer: [`Answer::Ready`].
    CniStatus,
    /// CNI GC: release every attachment not listed. Answer: [`Answer::Done`].
    CniGc {
        /// Attachments the runtime still knows about; all others are stale.
        valid_attachments: Vec<AttachmentKey>,
    },
    /// Daemon and dataplane status. Answer: [`Answer::Json`].
    Status,
    /// Local endpoints (pods). Answer: [`Answer::Json`].
    Endpoints,
    /// The routing table. Answer: [`Answer::Json`].
    Routes,
    /// Known nodes. Answer: [`Answer::Json`].
    Nodes,
    /// Removes a node from the cluster datastore for good: its record,
    /// endpoints and pod blocks (which stay reserved after its lease expired
    /// until this or the grace period). Answer: [`Answer::Json`] `{"node",
    /// "released_blocks": [...]}`.
    NodeRemove { name: String },
    /// Dataplane counters, drops by reason included. Answer: [`Answer::Json`].
    Stats,
    /// Create or update objects. Answer: [`Answer::Json`] describing what changed.
    Apply {
        /// YAML or JSON text holding one document or several (`---` separated).
        documents: String,
    },
    /// Delete the objects the documents name. Answer: [`Answer::Json`] describing what changed.
    Delete {
        /// YAML or JSON text holding one document or several (`---` separated).
        documents: String,
    },
    /// Drops and policy denials seen by the workers from now on, at most
    /// `count`, answered after `timeout_ms` (or when `count` arrived). Answer:
    /// [`Answer::Json`] `{"events": [...]}`, one object per drop with time,
    /// pod, direction, 5-tuple, verdict, reason and the selecting policies.
    Monitor { count: u32, timeout_ms: u32 },
    /// Follows the next `count` packets matching `filter` (see
    /// `sluice_dataplane::trace::Filter`: `src A`, `dst A`, `host A`, `port N`,
    /// `proto P`, ...) through the stages. Answers when `count` packets were
    /// traced or after `timeout_ms`. Answer: [`Answer::Json`] `{"packets":
    /// [{"unix_ns", "worker", "in_port", "len", "summary", "flow", "steps":
    /// [{"stage", "next", "detail"}], "out_port"}]}`.
    Trace {
        count: u32,
        #[serde(default)]
        filter: String,
        /// Only packets received on this port (`uplink`, `host` or
        /// `NAMESPACE/POD`); all ports when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        timeout_ms: u32,
    },
    /// Copies of the next `count` frames received or sent on a port: `uplink`,
    /// `host`, or a pod as `NAMESPACE/POD`. Answers when `count` frames were
    /// seen or after `timeout_ms`. Answer: [`Answer::Json`] `{"frames":
    /// [{"unix_ns", "rx", "hex"}]}`.
    Capture {
        port: String,
        count: u32,
        timeout_ms: u32,
    },
    /// Which NetworkPolicies select each side of a connection, the verdict and
    /// the rule that decided it. Answer: [`Answer::Json`].
    PolicyExplain {
        /// `NAMESPACE/POD` or an IPv4 address.
        from: String,
        /// `NAMESPACE/POD` or an IPv4 address.
        to: String,
        port: u16,
        /// `TCP`, `UDP` or `SCTP`.
        protocol: String,
    },
}

impl Request {
    /// The wire name of the operation, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::CniAdd(_) => "cni_add",
            Request::CniDel(_) => "cni_del",
            Request::CniCheck(_) => "cni_check",
            Request::CniStatus => "cni_status",
            Request::CniGc { .. } => "cni_gc",
            Request::Status => "status",
            Request::Endpoints => "endpoints",
            Request::Routes => "routes",
            Request::Nodes => "nodes",
            Request::NodeRemove { .. } => "node_remove",
            Request::Stats => "stats",
            Request::Apply { .. } => "apply",
            Request::Delete { .. } => "delete",
            Request::PolicyExplain { .. } => "policy_explain",
            Request::Capture { .. } => "capture",
            Request::Monitor { .. } => "monitor",
            Request::Trace { .. } => "trace",
        }
    }
}

/// Everything the daemon needs to attach a pod (CNI ADD and CHECK).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttach {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`: the interface to create inside the namespace.
    pub ifname: String,
    /// Who the pod is, from `CNI_ARGS`.
    #[serde(default)]
    pub pod: PodRef,
    /// MTU from the network configuration; `None` lets the daemon choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Everything the daemon needs to detach a pod (CNI DEL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniDetach {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`, which the runtime may omit on DEL (the namespace may be gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Who the pod is, from `CNI_ARGS`.
    #[serde(default)]
    pub pod: PodRef,
}

/// The Kubernetes identity of a pod, as runtimes pass it in `CNI_ARGS`. Every field is
/// optional: runtimes other than a kubelet's pass some or none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
}

/// The key of one attachment: CNI state is keyed by (network, container id, interface), and
/// Sluice has one network per node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// The daemon's answer: `{"ok": <Answer>}` or `{"error": <ApiError>}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Answer),
    Error(ApiError),
}

impl Response {
    pub fn into_result(self) -> Result<Answer, ApiError> {
        match self {
            Response::Ok(answer) => Ok(answer),
            Response::Error(err) => Err(err),
        }
    }
}

impl From<Result<Answer, ApiError>> for Response {
    fn from(result: Result<Answer, ApiError>) -> Self {
        match result {
            Ok(answer) => Response::Ok(answer),
            Err(err) => Response::Error(err),
        }
    }
}

/// A successful answer. Externally tagged: `"done"`, `{"attached": {...}}`,
/// `{"ready": {"ready": true}}`, `{"json": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The pod's attachment (CNI ADD, CHECK).
    Attached(Attachment),
    /// The operation completed and has nothing to report (CNI DEL, CHECK, GC).
    Done,
    /// Readiness to serve CNI ADD (CNI STATUS).
    Ready {
        ready: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An operator view whose shape belongs to the operation (status, stats, apply, ...).
    Json(serde_json::Value),
}

/// One pod attachment, independent of any CNI version: the plugin formats it into the result
/// shape the runtime asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Interface name inside the pod.
    pub ifname: String,
    /// MAC address of the pod interface, `"02:00:c6:13:01:05"`.
    pub mac: String,
    pub mtu: u32,
    /// The network namespace path the interface lives in.
    pub sandbox: String,
    /// The pod address with prefix length, `"198.19.1.5/32"`.
    pub address: String,
    /// The gateway the pod uses, `"169.254.1.1"`; empty when there is none.
    pub gateway: String,
    /// Routes installed in the pod.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One route inside the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination prefix, `"0.0.0.0/0"`.
    pub dst: String,
    /// Next hop; `None` for a directly connected destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// An error answer. `code` follows the CNI error numbers where one fits (see [`code`]), so the
/// plugin can hand it to the runtime unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg} (code {code})")]
pub struct ApiError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl ApiError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        ApiError {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }
}

/// Error codes of [`ApiError`]. 0–99 are the CNI specification's well-known codes (only those
/// Sluice uses are listed); 100 and up are Sluice's own.
pub mod code {
    /// CNI 1: the configuration's `cniVersion` is not supported.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// CNI 3: the container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// CNI 4: a `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// CNI 5: I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// CNI 6: content could not be decoded.
    pub const DECODE_FAILURE: u32 = 6;
    /// CNI 7: the network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// CNI 11: a transient condition; the runtime should retry later. Sluice answers it while
    /// sluiced starts up or cannot be reached.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// CNI 50 (STATUS): the plugin cannot serve ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// CNI 51 (STATUS): the plugin cannot serve ADD requests, and existing pods may have
    /// limited connectivity.
    pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
    /// The node's address pool has no free address.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The (container id, interface) pair is already attached; ADD was called twice without
    /// DEL.
    pub const ALREADY_ATTACHED: u32 = 101;
    /// The network namespace path does not exist or is not a network namespace.
    pub const NETNS_UNUSABLE: u32 = 102;
    /// Creating or configuring the pod interface failed.
    pub const INTERFACE_FAILED: u32 = 103;
    /// The request could not be decoded, was larger than [`super::MAX_REQUEST`], or named an
    /// unknown operation.
    pub const INVALID_REQUEST: u32 = 104;
    /// The operation is understood but this daemon does not implement it.
    pub const UNSUPPORTED_OP: u32 = 105;
    /// The peer answered something that cannot be interpreted (plugin and daemon versions
    /// disagree).
    pub const PROTOCOL: u32 = 106;
    /// CHECK found the attachment different from what ADD set up.
    pub const CHECK_FAILED: u32 = 107;
    /// An `apply`/`delete` document is not a valid Sluice object.
    pub const INVALID_DOCUMENT: u32 = 108;
    /// An operator request named an object that does not exist.
    pub const NOT_FOUND: u32 = 109;
    /// An internal error (the value libcni uses for the same purpose).
    pub const INTERNAL: u32 = 999;
}

/// One message as it goes on the wire: JSON followed by `'\n'`.
///
/// Serialising the types of this module cannot fail. Should a foreign `T` fail (a map with
/// non-string keys), the line carries an [`ApiError`] response with [`code::INTERNAL`]
/// instead, which a server can send as is and which a server rejects as a request.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).unwrap_or_else(|err| {
        let fallback = Response::Error(ApiError::new(
            code::INTERNAL,
            format!("cannot encode message: {err}"),
        ));
        // A `Response` of strings and numbers always serialises.
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    line.push(b'\n');
    line
}

/// Why [`read_frame`] returned no line.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message longer than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("connection closed in the middle of a message ({len} bytes read)")]
    Truncated { len: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one `'\n'`-terminated message of at most `limit` bytes (newline excluded) and returns
/// it without the newline; `Ok(None)` on a clean end of stream between messages.
///
/// Never buffers more than `limit` + one read's worth of bytes, whatever the peer sends.
pub fn read_frame<R: BufRead>(reader: &mut R, limit: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        };
        if available.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Truncated { len: line.len() })
            };
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > limit {
            return Err(FrameError::TooLarge { limit });
        }
        line.extend_from_slice(chunk);
        let consumed = chunk.len() + usize::from(done);
        reader.consume(consumed);
        if done {
            return Ok(Some(line));
        }
    }
}

/// Why a [`Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody answers on the socket: it does not exist, nobody listens (connection refused),
    /// access is denied, or the daemon did not accept in time. sluiced is down or starting.
    #[error("sluiced is not reachable at {}: {source}", socket.display())]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon accepted the request but did not answer in time.
    #[error("sluiced did not answer {op} within {}s", after.as_secs_f32())]
    Timeout { op: &'static str, after: Duration },
    /// The connection closed before the answer was complete (the daemon exited or restarted).
    #[error("sluiced closed the connection before answering {op}")]
    Closed { op: &'static str },
    /// Reading or writing the socket failed after connecting.
    #[error("talking to sluiced failed during {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The request is larger than the daemon accepts.
    #[error("{op} request is {len} bytes, more than the {limit} bytes sluiced accepts")]
    RequestTooLarge {
        op: &'static str,
        len: usize,
        limit: usize,
    },
    /// The daemon answered something that is not a [`Response`].
    #[error("sluiced answered {op} with something this client cannot read: {reason}")]
    Protocol { op: &'static str, reason: String },
    /// An earlier call on this connection failed, leaving it in an unknown state.
    #[error("an earlier call on this connection failed; connect again")]
    Broken,
}

impl ClientError {
    /// True when the daemon could not be reached at all, as opposed to a failure after it
    /// accepted the connection.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// A blocking client for one connection to sluiced.
///
/// ```no_run
/// use sluice_control::api::{Client, Request, CONNECT_TIMEOUT, DEFAULT_SOCKET};
/// let mut client = Client::connect(DEFAULT_SOCKET, CONNECT_TIMEOUT)?;
/// let status = client.call(&Request::Status)?;
/// # Ok::<(), sluice_control::api::ClientError>(())
/// ```
pub struct Client {
    socket: PathBuf,
    writer: UnixStream,
    reader: BufReader<DeadlineReader>,
    io_timeout: Duration,
    broken: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .field("io_timeout", &self.io_timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to sluiced at `socket`, waiting at most `timeout` for it to accept. The
    /// read/write timeout of calls starts at [`CNI_TIMEOUT`].
    pub fn connect(socket: impl AsRef<Path>, timeout: Duration) -> Result<Client, ClientError> {
        let socket = socket.as_ref().to_path_buf();
        let unreachable = |source| ClientError::Unreachable {
            socket: socket.clone(),
            source,
        };
        let stream = connect_within(&socket, timeout).map_err(unreachable)?;
        let read_half = stream.try_clone().map_err(unreachable)?;
        Ok(Client {
            socket,
            writer: stream,
            reader: BufReader::new(DeadlineReader {
                stream: read_half,
                deadline: Instant::now(),
            }),
            io_timeout: CNI_TIMEOUT,
            broken: false,
        })
    }

    /// Sets how long one call may take, from writing the request to reading the whole answer.
    pub fn set_io_timeout(&mut self, timeout: Duration) {
        self.io_timeout = timeout;
    }

    pub fn with_io_timeout(mut self, timeout: Duration) -> Client {
        self.set_io_timeout(timeout);
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and waits for its answer.
    ///
    /// An error other than [`ClientError::RequestTooLarge`] leaves the connection unusable:
    /// later calls return [`ClientError::Broken`].
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        let op = request.op();
        let line = encode(request);
        let len = line.len() - 1;
        if len > MAX_REQUEST {
            return Err(ClientError::RequestTooLarge {
                op,
                len,
                limit: MAX_REQUEST,
            });
        }
        let result = self.exchange(op, &line);
        if result.is_err() {
            self.broken = true;
            // Nothing more will be read or written; a failing shutdown changes nothing.
            let _ = self.writer.shutdown(std::net::Shutdown::Both);
        }
        result
    }

    fn exchange(&mut self, op: &'static str, line: &[u8]) -> Result<Response, ClientError> {
        let timeout = self.io_timeout.max(Duration::from_millis(1));
        let deadline = Instant::now() + timeout;
        let io_error = |source: io::Error| {
            if is_timeout(&source) {
                ClientError::Timeout { op, after: timeout }
            } else {
                ClientError::Io { op, source }
            }
        };
        self.writer
            .set_write_timeout(Some(timeout))
            .map_err(io_error)?;
        self.writer.write_all(line).map_err(io_error)?;
        self.writer.flush().map_err(io_error)?;

        self.reader.get_mut().deadline = deadline;
        let answer = match read_frame(&mut self.reader, MAX_RESPONSE) {
            Ok(Some(answer)) => answer,
            Ok(None) | Err(FrameError::Truncated { .. }) => return Err(ClientError::Closed { op }),
            Err(FrameError::TooLarge { limit }) => {
                return Err(ClientError::Protocol {
                    op,
                    reason: format!("answer longer than {limit} bytes"),
                })
            }
            Err(FrameError::Io(source)) => return Err(io_error(source)),
        };
        serde_json::from_slice(&answer).map_err(|err| ClientError::Protocol {
            op,
            reason: err.to_string(),
        })
    }
}

fn is_timeout(err: &io::Error) -> bool {
    // A socket read timeout surfaces as EAGAIN (WouldBlock) on Linux.
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects, giving up after `timeout`.
///
/// std offers no connect timeout for Unix sockets, and connect only blocks when the
/// listener's backlog is full (the daemon is alive but not accepting). The connect therefore
/// runs on a helper thread; on timeout that thread is left to finish on its own.
fn connect_within(socket: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    thread::Builder::new()
        .name("sluice-connect".into())
        .spawn(move || {
            // The receiver is gone only when the caller gave up; the stream is then dropped.
            let _ = tx.send(UnixStream::connect(&path));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no accept within {}s", timeout.as_secs_f32()),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(io::Error::other("connect thread ended without a result"))
        }
    }
}

/// The read half of a connection, bounded by a deadline for the whole answer rather than by a
/// timeout per read, so a daemon that trickles bytes cannot stretch a call.
struct DeadlineReader {
    stream: UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn attach() -> CniAttach {
        CniAttach {
            container_id: "c0ffee".into(),
            netns: "/run/netns/pod-a".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: Some("default".into()),
                name: Some("web-0".into()),
                uid: Some("7f2c".into()),
                infra_container_id: Some("c0ffee".into()),
            },
            mtu: Some(1450),
        }
    }

    fn attachment() -> Attachment {
        Attachment {
            ifname: "eth0".into(),
            mac: "02:00:c6:13:01:05".into(),
            mtu: 1450,
            sandbox: "/run/netns/pod-a".into(),
            address: "198.19.1.5/32".into(),
            gateway: "169.254.1.1".into(),
            routes: vec![RouteSpec {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
        }
    }

    fn every_request() -> Vec<Request> {
        vec![
            Request::CniAdd(attach()),
            Request::CniDel(CniDetach {
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
                netns: None,
                pod: PodRef::default(),
            }),
            Request::CniCheck(attach()),
            Request::CniStatus,
            Request::CniGc {
                valid_attachments: vec![AttachmentKey {
                    container_id: "c0ffee".into(),
                    ifname: "eth0".into(),
                }],
            },
            Request::Status,
            Request::Endpoints,
            Request::Routes,
            Request::Nodes,
            Request::NodeRemove { name: "n2".into() },
            Request::Stats,
            Request::Apply {
                documents: "kind: Pool\n---\nkind: Node\n".into(),
            },
            Request::Delete {
                documents: "{\"kind\":\"Pool\"}".into(),
            },
        ]
    }

    #[test]
    fn every_request_round_trips_and_names_its_op() {
        for request in every_request() {
            let line = encode(&request);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(value["op"], request.op());
            let back: Request = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, request);
        }
    }

    #[test]
    fn request_wire_shapes() {
        assert_eq!(
            serde_json::to_value(Request::CniAdd(attach())).unwrap(),
            json!({
                "op": "cni_add", "container_id": "c0ffee", "netns": "/run/netns/pod-a",
                "ifname": "eth0", "mtu": 1450,
                "pod": {"namespace": "default", "name": "web-0", "uid": "7f2c",
                        "infra_container_id": "c0ffee"}
            })
        );
        assert_eq!(
            serde_json::to_value(Request::CniStatus).unwrap(),
            json!({"op": "cni_status"})
        );
        let gc: Request = serde_json::from_value(json!({
            "op": "cni_gc", "valid_attachments": [{"container_id": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(
            gc,
            Request::CniGc {
                valid_attachments: vec![AttachmentKey {
                    container_id: "a".into(),
                    ifname: "eth0".into()
                }]
            }
        );
        // Optional parts may be left out by hand-written requests.
        let del: Request = serde_json::from_value(json!({
            "op": "cni_del", "container_id": "a", "ifname": "eth0"
        }))
        .unwrap();
        assert_eq!(
            del,
            Request::CniDel(CniDetach {
                container_id: "a".into(),
                ifname: "eth0".into(),
                netns: None,
                pod: PodRef::default()
            })
        );
    }

    #[test]
    fn requests_reject_unknown_fields_and_ops() {
        let bad = [
            json!({"op": "cni_add", "container_id": "a", "netns": "/n", "ifname": "eth0",
                   "pod": {}, "mtuu": 1}),
            json!({"op": "cni_add", "container_id": "a", "netns": "/n", "ifname": "eth0",
                   "pod": {"nmae": "x"}}),
            json!({"op": "cni_gc", "valid_attachments": [], "extra": 1}),
            json!({"op": "cni_gc", "valid_attachments": [{"container_id": "a", "ifname": "e",
                   "x": 1}]}),
            json!({"op": "apply", "documents": "", "dry_run": true}),
            json!({"op": "trace"}),
            json!({"container_id": "a"}),
            json!({"op": "cni_add", "container_id": "a"}),
        ];
        for value in bad {
            assert!(
                serde_json::from_value::<Request>(value.clone()).is_err(),
                "accepted {value}"
            );
        }
        // serde's limit, documented on `Request`: field-less ops ignore extra fields.
        let status: Request = serde_json::from_value(json!({"op": "status", "x": 1})).unwrap();
        assert_eq!(status, Request::Status);
    }

    #[test]
    fn response_wire_shapes_round_trip() {
        let cases = [
            (
                Response::Ok(Answer::Attached(attachment())),
                json!({"ok": {"attached": {
                    "ifname": "eth0", "mac": "02:00:c6:13:01:05", "mtu": 1450,
                    "sandbox": "/run/netns/pod-a", "address": "198.19.1.5/32",
                    "gateway": "169.254.1.1",
                    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]}}}),
            ),
            (Response::Ok(Answer::Done), json!({"ok": "done"})),
            (
                Response::Ok(Answer::Ready {
                    ready: false,
                    reason: Some("no node address yet".into()),
                }),
                json!({"ok": {"ready": {"ready": false, "reason": "no node address yet"}}}),
            ),
            (
                Response::Ok(Answer::Json(json!({"endpoints": 3}))),
                json!({"ok": {"json": {"endpoints": 3}}}),
            ),
            (
                Response::Error(
                    ApiError::new(code::POOL_EXHAUSTED, "no free address in 198.19.1.0/26")
                        .with_details("64 of 64 used"),
                ),
                json!({"error": {"code": 100, "msg": "no free address in 198.19.1.0/26",
                                 "details": "64 of 64 used"}}),
            ),
            (
                Response::Error(ApiError::new(code::ALREADY_ATTACHED, "already attached")),
                json!({"error": {"code": 101, "msg": "already attached"}}),
            ),
        ];
        for (response, wire) in cases {
            assert_eq!(serde_json::to_value(&response).unwrap(), wire);
            let back: Response = serde_json::from_slice(&encode(&response)).unwrap();
            assert_eq!(back, response);
        }
    }

    #[test]
    fn responses_tolerate_fields_from_newer_daemons() {
        let response: Response = serde_json::from_value(json!({"ok": {"attached": {
            "ifname": "eth0", "mac": "m", "mtu": 1500, "sandbox": "/n", "address": "a/32",
            "gateway": "", "routes": [{"dst": "0.0.0.0/0", "scope": 0}], "ipv6": null}}}))
        .unwrap();
        assert!(matches!(response, Response::Ok(Answer::Attached(_))));
        let err: Response =
            serde_json::from_value(json!({"error": {"code": 3, "msg": "gone", "hint": "x"}}))
                .unwrap();
        assert_eq!(err.into_result().unwrap_err().code, code::UNKNOWN_CONTAINER);
    }

    #[test]
    fn api_error_display_names_code() {
        let err = ApiError::new(code::NETNS_UNUSABLE, "netns /run/netns/x does not exist");
        assert_eq!(
            err.to_string(),
            "netns /run/netns/x does not exist (code 102)"
        );
    }

    #[test]
    fn encode_falls_back_to_an_error_line() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1u8], 1);
        let line = encode(&map);
        assert_eq!(line.last(), Some(&b'\n'));
        let response: Response = serde_json::from_slice(&line).unwrap();
        assert_eq!(response.into_result().unwrap_err().code, code::INTERNAL);
    }

    #[test]
    fn read_frame_splits_lines_and_bounds_length() {
        let mut input = io::Cursor::new(b"{\"a\":1}\n{}\n".to_vec());
        assert_eq!(read_frame(&mut input, 16).unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(read_frame(&mut input, 16).unwrap().unwrap(), b"{}");
        assert!(read_frame(&mut input, 16).unwrap().is_none());

        let mut exact = io::Cursor::new(b"1234\n".to_vec());
        assert_eq!(read_frame(&mut exact, 4).unwrap().unwrap(), b"1234");
        let mut long = io::Cursor::new(b"12345\n".to_vec());
        assert!(matches!(
            read_frame(&mut long, 4),
            Err(FrameError::TooLarge { limit: 4 })
        ));
        // Small buffer: the limit holds across many fills.
        let mut slow = BufReader::with_capacity(2, io::Cursor::new(vec![b'x'; 100]));
        assert!(matches!(
            read_frame(&mut slow, 10),
            Err(FrameError::TooLarge { .. })
        ));
        let mut cut = io::Cursor::new(b"{\"a\"".to_vec());
        assert!(matches!(
            read_frame(&mut cut, 16),
            Err(FrameError::Truncated { len: 4 })
        ));
    }

    fn temp_socket(tag: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Only uniqueness matters; nothing else is ordered by this counter.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("sluice-api-{tag}-{}-{n}.sock", std::process::id()))
    }

    /// A server that answers each request line with `answer(request)`; `None` hangs up.
    fn serve(
        tag: &str,
        answer: impl Fn(Request) -> Option<Vec<u8>> + Send + 'static,
    ) -> (PathBuf, thread::JoinHandle<()>) {
        let path = temp_socket(tag);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            while let Ok(Some(line)) = read_frame(&mut reader, MAX_REQUEST) {
                let request: Request = serde_json::from_slice(&line).unwrap();
                match answer(request) {
                    Some(bytes) => writer.write_all(&bytes).unwrap(),
                    None => return,
                }
            }
        });
        (path, handle)
    }

    #[test]
    fn client_carries_several_calls_on_one_connection() {
        let (path, server) = serve("calls", |request| {
            Some(encode(&match request {
                Request::CniAdd(a) => Response::Ok(Answer::Attached(Attachment {
                    ifname: a.ifname,
                    ..attachment()
                })),
                Request::CniStatus => Response::Ok(Answer::Ready {
                    ready: true,
                    reason: None,
                }),
                other => Response::Error(ApiError::new(code::UNSUPPORTED_OP, other.op())),
            }))
        });
        let mut client = Client::connect(&path, CONNECT_TIMEOUT).unwrap();
        assert_eq!(client.socket(), path);
        assert_eq!(
            client.call(&Request::CniAdd(attach())).unwrap(),
            Response::Ok(Answer::Attached(attachment()))
        );
        assert_eq!(
            client.call(&Request::CniStatus).unwrap(),
            Response::Ok(Answer::Ready {
                ready: true,
                reason: None
            })
        );
        let err = client
            .call(&Request::Stats)
            .unwrap()
            .into_result()
            .unwrap_err();
        assert_eq!(
            (err.code, err.msg.as_str()),
            (code::UNSUPPORTED_OP, "stats")
        );
        drop(client);
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_socket_is_unreachable() {
        let path = temp_socket("missing");
        let err = Client::connect(&path, CONNECT_TIMEOUT).unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()));
    }

    #[test]
    fn socket_without_listener_is_unreachable() {
        let path = temp_socket("refused");
        let listener = UnixListener::bind(&path).unwrap();
        drop(listener); // the file stays, nobody listens: ECONNREFUSED
        let err = Client::connect(&path, CONNECT_TIMEOUT).unwrap_err();
        match &err {
            ClientError::Unreachable { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn silent_daemon_times_out_and_breaks_the_connection() {
        let path = temp_socket("silent");
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = Client::connect(&path, CONNECT_TIMEOUT)
            .unwrap()
            .with_io_timeout(Duration::from_millis(100));
        let err = client.call(&Request::Status).unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout { op: "status", .. }),
            "{err:?}"
        );
        assert!(matches!(
            client.call(&Request::Status),
            Err(ClientError::Broken)
        ));
        drop(listener);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn hang_up_and_garbage_are_told_apart() {
        let (path, server) = serve("hangup", |_| None);
        let mut client = Client::connect(&path, CONNECT_TIMEOUT).unwrap();
        let err = client.call(&Request::Nodes).unwrap_err();
        assert!(
            matches!(err, ClientError::Closed { op: "nodes" }),
            "{err:?}"
        );
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();

        let (path, server) = serve("garbage", |_| Some(b"{\"fine\":true}\n".to_vec()));
        let mut client = Client::connect(&path, CONNECT_TIMEOUT).unwrap();
        let err = client.call(&Request::Routes).unwrap_err();
        assert!(
            matches!(err, ClientError::Protocol { op: "routes", .. }),
            "{err:?}"
        );
        drop(client);
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn oversized_request_is_refused_before_sending() {
        let (path, server) = serve("large", |_| Some(encode(&Response::Ok(Answer::Done))));
        let mut client = Client::connect(&path, CONNECT_TIMEOUT).unwrap();
        let huge = Request::Apply {
            documents: "x".repeat(MAX_REQUEST),
        };
        let err = client.call(&huge).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::RequestTooLarge {
                    op: "apply",
                    limit: MAX_REQUEST,
                    ..
                }
            ),
            "{err:?}"
        );
        // The connection is still usable.
        assert_eq!(
            client.call(&Request::Stats).unwrap(),
            Response::Ok(Answer::Done)
        );
        drop(client);
        server.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
