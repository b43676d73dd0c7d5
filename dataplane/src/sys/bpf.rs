//! Sluice's XDP program in the kernel: loading it and its maps ([`XdpProgram`],
//! through aya), attaching it to a link over rtnetlink ([`XdpNetlink`],
//! [`XdpAttachment`]) and finding programs that a dead process left
//! ([`detach_stale`]).
//!
//! Sluice attaches through netlink (`IFLA_XDP`) rather than a BPF link
//! (`BPF_LINK_CREATE`). A BPF link would detach itself when the process dies;
//! a netlink attachment outlives it, which is harmless (its socket closed, the
//! program passes everything to the kernel) until [`detach_stale`] removes it at
//! the next start. In exchange operators see and remove it with the usual tools
//! (`ip link set dev X xdp off`, which a BPF link refuses), and Sluice needs no
//! `BPF_LINK_DETACH` by id, which aya does not offer. The netlink requests are
//! written here rather than in [`super::link`] because they need the raw
//! `IFLA_XDP` attributes. No `unsafe` here: aya holds it.

use std::error::Error as StdError;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData, MapError, XskMap};
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfLoader};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::libc;

/// The program's name in the kernel (`bpftool prog`, `ip link`): how a Sluice
/// program left on a link is recognised.
pub const PROGRAM_NAME: &str = "sluice_xdp";
/// Queues the program's socket map has room for (`max_entries` of `sluice_xsks`).
pub const MAX_QUEUES: u32 = 64;
/// Pod prefixes the program's trie holds (`max_entries` of `sluice_pods`).
pub const MAX_PREFIXES: usize = 256;

const MAP_CONFIG: &str = "sluice_config";
const MAP_XSKS: &str = "sluice_xsks";
const MAP_PODS: &str = "sluice_pods";

/// `sluice_config.flags` in the program.
const F_VXLAN: u16 = 1 << 0;
const F_IPIP: u16 = 1 << 1;
const F_NATIVE: u16 = 1 << 2;

/// The compiled program, `dataplane/xdp/sluice_xdp.o` (see the README there).
static PROGRAM: &[u8] = aya::include_bytes_aligned!("../../xdp/sluice_xdp.o");

/// What went wrong loading the program, changing its maps or removing a stale
/// one.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("not permitted to {op} (Sluice needs CAP_BPF and CAP_NET_ADMIN, or root): {source}")]
    Permission {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel verifier rejected XDP program {PROGRAM_NAME}: {source}; log tail:\n{log_tail}"
    )]
    Verifier {
        log_tail: String,
        #[source]
        source: io::Error,
    },
    #[error("loading XDP program {PROGRAM_NAME}: {detail}")]
    Load { detail: String },
    #[error("{op} XDP map {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("{op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What the program steers (`struct sluice_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteerConfig {
    /// The node's underlay address: tunnel packets to it are Sluice's.
    pub node_ip: Ipv4Addr,
    /// VXLAN's UDP port; `None`: leave VXLAN to the kernel.
    pub vxlan_port: Option<u16>,
    pub ipip: bool,
    /// Look destinations up in the pod prefixes.
    pub native: bool,
}

impl SteerConfig {
    /// The 8 bytes of `struct sluice_config`: node address and VXLAN port in
    /// network order, then the flags in host order.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut flags = 0;
        if self.vxlan_port.is_some() {
            flags |= F_VXLAN;
        }
        if self.ipip {
            flags |= F_IPIP;
        }
        if self.native {
            flags |= F_NATIVE;
        }
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&self.node_ip.octets());
        v[4..6].copy_from_slice(&self.vxlan_port.unwrap_or(0).to_be_bytes());
        v[6..].copy_from_slice(&flags.to_ne_bytes());
        v
    }
}

/// The loaded (not yet attached) program and its maps. Dropping it unloads the
/// program unless a link still holds it.
pub struct XdpProgram {
    config: Array<MapData, [u8; 8]>,
    pods: LpmTrie<MapData, [u8; 4], u32>,
    xsks: XskMap<MapData>,
    fd: OwnedFd,
    id: u32,
    _ebpf: Ebpf,
}

impl std::fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpProgram")
            .field("id", &self.id)
            .field("fd", &self.fd)
            .finish()
    }
}

impl XdpProgram {
    /// Creates the maps and loads the program through the verifier.
    pub fn load() -> Result<XdpProgram, BpfError> {
        let mut ebpf = EbpfLoader::new().load(PROGRAM).map_err(|e| {
            let detail = chain(&e);
            match errno_in(&e) {
                Some(libc::EPERM | libc::EACCES) => BpfError::Permission {
                    op: "create BPF maps",
                    source: io::Error::other(detail),
                },
                _ => BpfError::Load { detail },
            }
        })?;
        let load = |e: ProgramError| BpfError::Load { detail: chain(&e) };
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| BpfError::Load {
                detail: "the embedded object has no such program".into(),
            })?
            .try_into()
            .map_err(load)?;
        prog.load().map_err(load_err)?;
        let id = prog.info().map_err(load)?.id();
        let fd = prog
            .fd()
            .map_err(load)?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| BpfError::Load {
                detail: format!("duplicating the program fd: {e}"),
            })?;
        Ok(XdpProgram {
            config: take_map(&mut ebpf, MAP_CONFIG)?,
            pods: take_map(&mut ebpf, MAP_PODS)?,
            xsks: take_map(&mut ebpf, MAP_XSKS)?,
            fd,
            id,
            _ebpf: ebpf,
        })
    }

    /// The program's id in the kernel (as `ip link` and `bpftool prog` show it).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn set_config(&mut self, cfg: &SteerConfig) -> Result<(), BpfError> {
        self.config
            .set(0, cfg.to_bytes(), 0)
            .map_err(map_err("write", MAP_CONFIG))
    }

    pub fn add_prefix(&mut self, addr: Ipv4Addr, len: u8) -> Result<(), BpfError> {
        self.pods
            .insert(&Key::new(u32::from(len), addr.octets()), 1, 0)
            .map_err(map_err("insert into", MAP_PODS))
    }

    pub fn remove_prefix(&mut self, addr: Ipv4Addr, len: u8) -> Result<(), BpfError> {
        self.pods
            .remove(&Key::new(u32::from(len), addr.octets()))
            .map_err(map_err("remove from", MAP_PODS))
    }

    /// Steers queue `queue` to the AF_XDP socket `sock`.
    pub fn set_socket(&mut self, queue: u32, sock: BorrowedFd<'_>) -> Result<(), BpfError> {
        self.xsks
            .set(queue, sock.as_raw_fd(), 0)
            .map_err(map_err("insert the socket into", MAP_XSKS))
    }
}

/// The name of the loaded program `id`; `None` once it is unloaded.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
}

/// Detaches every program called [`PROGRAM_NAME`] from link `ifindex`; others
/// stay. Returns how many went.
pub fn detach_stale(nl: &mut XdpNetlink, ifindex: u32) -> Result<usize, BpfError> {
    let attached = nl.attached(ifindex).map_err(|source| BpfError::Netlink {
        op: "query XDP programs",
        source,
    })?;
    let mut removed = 0;
    for a in attached {
        let Some(info) = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == a.prog_id)
        else {
            continue; // unloaded meanwhile
        };
        if info.name_as_str() != Some(PROGRAM_NAME) {
            continue;
        }
        let fd = info.fd().map_err(|e| match errno_in(&e) {
            Some(libc::EPERM | libc::EACCES) => BpfError::Permission {
                op: "open a stale XDP program by id",
                source: io::Error::other(chain(&e)),
            },
            _ => BpfError::Load { detail: chain(&e) },
        })?;
        match nl.detach(ifindex, fd.as_fd(), a.mode) {
            Ok(()) => removed += 1,
            // Replaced since we looked: whoever did it owns the link now.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(BpfError::Netlink {
                    op: "detach a stale XDP program",
                    source,
                })
            }
        }
    }
    Ok(removed)
}

/// `XDP_FLAGS_*` (`linux/if_link.h`).
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_HW_MODE: u32 = 1 << 3;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// Where on a link an XDP program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// In the driver, before an skb exists (native).
    Driver,
    /// On the skb, after the driver (generic); works on every link.
    Skb,
    /// On the NIC.
    Hw,
}

impl AttachMode {
    /// The `XDP_FLAGS_*` mode bit.
    pub fn flag(self) -> u32 {
        match self {
            AttachMode::Driver => XDP_FLAGS_DRV_MODE,
            AttachMode::Skb => XDP_FLAGS_SKB_MODE,
            AttachMode::Hw => XDP_FLAGS_HW_MODE,
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "native",
            AttachMode::Skb => "skb",
            AttachMode::Hw => "offload",
        })
    }
}

/// A program attached to a link, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    pub mode: AttachMode,
    pub prog_id: u32,
}

/// A blocking rtnetlink socket for `IFLA_XDP` requests, in the namespace of the
/// thread that opened it.
pub struct XdpNetlink {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for XdpNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpNetlink")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

const RX_BUF: usize = 64 * 1024;

impl XdpNetlink {
    /// A socket in the calling thread's network namespace; it keeps acting there
    /// when used from other threads.
    pub fn open() -> io::Result<XdpNetlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Errors then carry the kernel's message; a kernel without it ignores it.
        let _ = sock.set_ext_ack(true);
        Ok(XdpNetlink {
            sock,
            seq: 0,
            rx: Vec::with_capacity(RX_BUF),
        })
    }

    /// The XDP programs attached to link `ifindex`, one per mode.
    pub fn attached(&mut self, ifindex: u32) -> io::Result<Vec<Attached>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let mut found = Vec::new();
        self.request(RouteNetlinkMessage::GetLink(msg), |reply| {
            let RouteNetlinkMessage::NewLink(link) = reply else {
                return;
            };
            for attr in &link.attributes {
                let LinkAttribute::Xdp(xdp) = attr else {
                    continue;
                };
                for x in xdp {
                    // The kernel reports each attached mode's id on its own; the
                    // mode-less IFLA_XDP_PROG_ID repeats one of them.
                    let (mode, id) = match *x {
                        LinkXdp::DrvProgId(id) => (AttachMode::Driver, id),
                        LinkXdp::SkbProgId(id) => (AttachMode::Skb, id),
                        LinkXdp::HwProgId(id) => (AttachMode::Hw, id),
                        _ => continue,
                    };
                    if id != 0 {
                        found.push(Attached { mode, prog_id: id });
                    }
                }
            }
        })?;
        Ok(found)
    }

    /// Attaches `prog` to link `ifindex` in `mode`, only if no program is
    /// attached there (`EBUSY` otherwise).
    pub fn attach(
        &mut self,
        ifindex: u32,
        prog: BorrowedFd<'_>,
        mode: AttachMode,
    ) -> io::Result<()> {
        self.set_xdp(
            ifindex,
            vec![
                LinkXdp::Fd(prog.as_raw_fd()),
                LinkXdp::Flags(mode.flag() | XDP_FLAGS_UPDATE_IF_NOEXIST),
            ],
        )
    }

    /// Detaches the program in `mode` from link `ifindex`, only if it is still
    /// `expected` (`EEXIST` if another has replaced it meanwhile).
    pub fn detach(
        &mut self,
        ifindex: u32,
        expected: BorrowedFd<'_>,
        mode: AttachMode,
    ) -> io::Result<()> {
        let fd = u32::try_from(expected.as_raw_fd())
            .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        self.set_xdp(
            ifindex,
            vec![
                LinkXdp::Fd(-1),
                LinkXdp::ExpectedFd(fd),
                LinkXdp::Flags(mode.flag() | XDP_FLAGS_REPLACE),
            ],
        )
    }

    fn set_xdp(&mut self, ifindex: u32, xdp: Vec<LinkXdp>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        msg.attributes.push(LinkAttribute::Xdp(xdp));
        self.request(RouteNetlinkMessage::SetLink(msg), |_| ())
    }

    /// Sends one request with an acknowledgement asked for, hands every reply to
    /// `on_reply`, and returns when the acknowledgement (or an error) arrives.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        crate::sys::link::transact(&self.sock, &mut self.rx, self.seq, msg, 0, &mut on_reply)
            .map_err(|e| match e {
                crate::sys::link::Transact::Io(e) => e,
                crate::sys::link::Transact::Decode(d) => {
                    io::Error::new(io::ErrorKind::InvalidData, d)
                }
            })
    }
}

/// A program attached to a link: detached on drop, only if it is still the one
/// attached (another process may have replaced it).
pub struct XdpAttachment {
    nl: XdpNetlink,
    ifindex: u32,
    mode: AttachMode,
    prog: OwnedFd,
    /// The link's name, for the message if detaching fails.
    label: String,
}

impl std::fmt::Debug for XdpAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpAttachment")
            .field("link", &self.label)
            .field("ifindex", &self.ifindex)
            .field("mode", &self.mode)
            .finish()
    }
}

impl XdpAttachment {
    /// Attaches `prog` to link `ifindex` in `mode` through `nl`, which then acts
    /// for the detach too (in the namespace it was opened in). `EBUSY` if another
    /// program is attached.
    pub fn attach(
        mut nl: XdpNetlink,
        ifindex: u32,
        prog: BorrowedFd<'_>,
        mode: AttachMode,
        label: &str,
    ) -> Result<XdpAttachment, (XdpNetlink, io::Error)> {
        let prog = match prog.try_clone_to_owned() {
            Ok(p) => p,
            Err(e) => return Err((nl, e)),
        };
        if let Err(e) = nl.attach(ifindex, prog.as_fd(), mode) {
            return Err((nl, e));
        }
        Ok(XdpAttachment {
            nl,
            ifindex,
            mode,
            prog,
            label: label.to_owned(),
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        if let Err(e) = self.nl.detach(self.ifindex, self.prog.as_fd(), self.mode) {
            // EEXIST: something replaced it since; that program is not ours to remove.
            if e.raw_os_error() != Some(libc::EEXIST) {
                eprintln!(
                    "sluice: detaching XDP program {PROGRAM_NAME} from {}: {e}",
                    self.label
                );
            }
        }
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| BpfError::Load {
        detail: format!("the embedded object has no map {name}"),
    })?;
    T::try_from(map).map_err(map_err("open", name))
}

fn map_err(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |e| BpfError::Map {
        op,
        map,
        source: Box::new(e),
    }
}

fn load_err(e: ProgramError) -> BpfError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            match io_error.raw_os_error() {
                // EPERM with no log: refused before the verifier ran.
                Some(libc::EPERM) if log.trim().is_empty() => BpfError::Permission {
                    op: "load a BPF program",
                    source: io_error,
                },
                _ => BpfError::Verifier {
                    log_tail: tail(&log, 20, 2000),
                    source: io_error,
                },
            }
        }
        other => BpfError::Load {
            detail: chain(&other),
        },
    }
}

/// The last `lines` lines of `log`, at most `max` bytes of them.
fn tail(log: &str, lines: usize, max: usize) -> String {
    let log = log.trim_end();
    let start = log
        .char_indices()
        .rev()
        .filter(|&(_, c)| c == '\n')
        .nth(lines.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    let mut t = &log[start..];
    if t.len() > max {
        let mut cut = t.len() - max;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        t = &t[cut..];
    }
    t.to_owned()
}

/// An error and its sources on one line.
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The first errno anywhere in an error's chain.
fn errno_in(e: &(dyn StdError + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_xdp_program() {
        // Reading a link needs no privilege; nothing attaches XDP to `lo` here.
        let mut nl = XdpNetlink::open().unwrap();
        assert_eq!(nl.attached(1).unwrap(), []);
        let e = nl.attached(0x7fff_fff0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }

    #[test]
    fn mode_flags() {
        assert_eq!(AttachMode::Driver.flag(), 4);
        assert_eq!(AttachMode::Skb.flag(), 2);
        assert_eq!(AttachMode::Skb.to_string(), "skb");
    }

    #[test]
    fn steer_config_layout() {
        let c = SteerConfig {
            node_ip: Ipv4Addr::new(198, 18, 0, 1),
            vxlan_port: Some(4789),
            ipip: true,
            native: true,
        };
        let v = c.to_bytes();
        assert_eq!(v[..4], [198, 18, 0, 1]);
        assert_eq!(v[4..6], [0x12, 0xb5]);
        assert_eq!(
            u16::from_ne_bytes([v[6], v[7]]),
            F_VXLAN | F_IPIP | F_NATIVE
        );
        let off = SteerConfig {
            vxlan_port: None,
            ipip: false,
            native: false,
            ..c
        };
        assert_eq!(off.to_bytes()[4..], [0, 0, 0, 0]);
    }

    #[test]
    fn log_tail() {
        assert_eq!(tail("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail("a\nb\nc", 5, 100), "a\nb\nc");
        assert_eq!(tail("abcdef", 1, 3), "def");
        assert_eq!(tail("", 3, 10), "");
    }

    #[test]
    fn embedded_object_has_the_program_and_maps() {
        // No privilege needed: the ELF names the program and the three maps the
        // loader takes by name, and the license the kernel reads.
        let text = String::from_utf8_lossy(PROGRAM);
        for name in [PROGRAM_NAME, MAP_CONFIG, MAP_PODS, MAP_XSKS, "Apache-2.0"] {
            assert!(text.contains(name), "{name} missing from sluice_xdp.o");
        }
    }
}
