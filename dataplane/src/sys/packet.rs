//! Kernel sockets for the uplink: `AF_PACKET` raw sockets bound to one link,
//! classic BPF filters on any socket, and batched receive and send
//! (`recvmmsg(2)`, `sendmmsg(2)`) into and out of caller-owned buffers.
//!
//! Written by hand because `nix` has no `sockaddr_ll` constructor, no
//! `SO_ATTACH_FILTER` or `PACKET_IGNORE_OUTGOING`, and its `recvmmsg` ties the
//! buffers to one borrow per call, which would mean allocating on every burst.
//!
//! Every call takes the fd it acts on as a [`BorrowedFd`], so none can outlive it.

// setsockopt, bind and the mmsg calls pass pointers the kernel reads and writes.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

use nix::libc::{self, c_int, c_void, socklen_t};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::sys::bpf_classic::Insn;

/// `ETH_P_IP`: the protocol an uplink socket is bound to.
pub const ETH_P_IP: u16 = libc::ETH_P_IP as u16;

// The kernel reads a `struct sock_filter` array; ours must have its layout.
const _: () = assert!(mem::size_of::<Insn>() == mem::size_of::<libc::sock_filter>());
const _: () = assert!(mem::align_of::<Insn>() == mem::align_of::<libc::sock_filter>());

/// A new `AF_PACKET` raw socket, nonblocking and close-on-exec, bound to no
/// protocol: it receives nothing until [`bind_link`] names one, so a filter
/// attached in between applies to every frame it will ever see.
pub fn packet_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A new nonblocking, close-on-exec `AF_INET` raw socket for IP protocol
/// `protocol` (`nix` names no protocol number outside its short list).
pub fn raw_ipv4_socket(protocol: u8) -> io::Result<OwnedFd> {
    let ty = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, ty, c_int::from(protocol)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds a packet socket to the link `ifindex` and the ethertype `protocol`
/// (host order): from now on it receives that link's frames of that type.
pub fn bind_link(fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
    let ifindex = c_int::try_from(ifindex).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface index {ifindex} is over {}", c_int::MAX),
        )
    })?;
    // SAFETY: sockaddr_ll is plain C data; all zeroes is a valid value of it.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: the pointer and length describe `sll`, which lives across the call;
    // the kernel only reads it.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            ptr::from_ref(&sll).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_ll>() as socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The link a bound packet socket is on, as `getsockname(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    /// The `ARPHRD_*` type (1 for Ethernet).
    pub hatype: u16,
    /// The link-layer address, first `addr_len` bytes of `addr` meaningful.
    pub addr: [u8; 8],
    pub addr_len: u8,
}

/// Where a bound packet socket is bound.
pub fn local_link(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // SAFETY: sockaddr_ll is plain C data; all zeroes is a valid value of it.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_ll>() as socklen_t;
    // SAFETY: the pointer and length describe `sll`; the kernel writes at most
    // `len` bytes and updates `len`.
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            ptr::from_mut(&mut sll).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if sll.sll_family != libc::AF_PACKET as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket family {} is not AF_PACKET", sll.sll_family),
        ));
    }
    Ok(LinkInfo {
        ifindex: u32::try_from(sll.sll_ifindex).unwrap_or(0),
        hatype: sll.sll_hatype,
        addr: sll.sll_addr,
        addr_len: sll.sll_halen.min(8),
    })
}

/// Sets an integer socket option.
pub fn set_int_option(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, which lives across the
    // call; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::from_ref(&value).cast::<c_void>(),
            mem::size_of::<c_int>() as socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops a packet socket from seeing frames sent on its link, by anyone
/// (`PACKET_IGNORE_OUTGOING`, Linux 4.20).
pub fn ignore_outgoing(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
}

/// Bytes of the `struct virtio_net_hdr` in front of every frame, both ways, on
/// a packet socket with [`vnet_hdr`] on (no `num_buffers`, unlike a TAP's).
pub const VNET_HDR_LEN: usize = 10;

/// Puts a `struct virtio_net_hdr` in front of every frame a packet socket sends
/// and receives (`PACKET_VNET_HDR`): superframes (GSO) and partial checksums
/// both ways.
pub fn vnet_hdr(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int_option(fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)
}

/// Attaches the classic BPF program `prog` as the socket's filter
/// (`SO_ATTACH_FILTER`), replacing any earlier one. The kernel checks it and
/// refuses (`EINVAL`) one that could run off its end.
pub fn attach_filter(fd: BorrowedFd<'_>, prog: &[Insn]) -> io::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("filter of {} instructions is over 65535", prog.len()),
        )
    })?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel copies the program and never writes through this pointer.
        filter: prog.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `fprog` points at `prog`, whose layout is `struct sock_filter`'s
    // (checked above) and which outlives the call; the kernel copies it in.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            ptr::from_ref(&fprog).cast::<c_void>(),
            mem::size_of::<libc::sock_fprog>() as socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads and discards whatever is queued on a nonblocking socket: frames that
/// arrived before its filter was attached. Returns how many.
pub fn drain(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n = 0;
    loop {
        // SAFETY: a null buffer of length 0 with MSG_TRUNC: the kernel writes
        // nothing and only dequeues.
        let r = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if r >= 0 {
            n += 1;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(n),
            _ => return Err(e),
        }
    }
}

/// A packet socket's kernel counters since they were last read (reading
/// clears them): frames that passed the filter, and of those the ones dropped
/// because the receive queue was full.
pub fn take_statistics(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = mem::size_of::<libc::tpacket_stats>() as socklen_t;
    // SAFETY: the pointer and length describe `st`; the kernel writes at most
    // `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            ptr::from_mut(&mut st).cast::<c_void>(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.tp_packets, st.tp_drops))
}

/// One message of a [`Mmsg::recv`]: its length, and whether it was longer than
/// its buffer (the bytes past the buffer are lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub truncated: bool,
}

/// Batched receive and send of one buffer per message: [`MmsgV`] with a
/// single piece in each.
#[derive(Debug)]
pub struct Mmsg {
    inner: MmsgV,
}

impl Mmsg {
    /// Room for `capacity` messages per call.
    pub fn new(capacity: usize) -> Mmsg {
        Mmsg {
            inner: MmsgV::new(capacity),
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Receives up to one message into each buffer of `bufs` (at most
    /// [`Mmsg::capacity`] of them), in one `recvmmsg(2)`, without waiting.
    /// Returns how many arrived; [`Mmsg::received`] tells their lengths.
    /// `EAGAIN` when none was waiting.
    pub fn recv<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: impl Iterator<Item = &'a mut [u8]>,
    ) -> io::Result<usize> {
        self.inner.recv(fd, bufs.map(std::iter::once))
    }

    /// The `i`th message of the last [`Mmsg::recv`] (meaningful below what it
    /// returned).
    pub fn received(&self, i: usize) -> Option<Received> {
        self.inner.received(i)
    }

    /// Sends each of `frames` (at most [`Mmsg::capacity`] of them) as one
    /// message, in one `sendmmsg(2)`, without waiting. Returns how many the kernel
    /// took, from the first; an error means it took none, and is about the first.
    pub fn send<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        frames: impl Iterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        self.inner.send(fd, frames.map(std::iter::once))
    }
}

/// Headers for batched receive and send where each message is several buffers
/// (a virtio-net header, then a frame in pieces). Allocated once; each call
/// points them at the caller's buffers for its duration only.
pub struct MmsgV {
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Vec<libc::iovec>,
    ends: Vec<usize>,
}

// SAFETY: the raw pointers inside point at the buffers of the call in progress
// and are rewritten at the start of every call; between calls they are never
// read, so moving the headers to another thread cannot reach freed memory.
unsafe impl Send for MmsgV {}

impl std::fmt::Debug for MmsgV {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgV")
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

impl MmsgV {
    /// Room for `capacity` messages per call.
    pub fn new(capacity: usize) -> MmsgV {
        // SAFETY: mmsghdr is plain C data; all zeroes is a valid value.
        let hdrs = (0..capacity).map(|_| unsafe { mem::zeroed() }).collect();
        MmsgV {
            hdrs,
            iovs: Vec::with_capacity(capacity * 4),
            ends: Vec::with_capacity(capacity),
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Collects the iovecs of each message, then points the headers at them (the
    /// vector no longer grows by then). Returns how many messages.
    fn fill(
        &mut self,
        msgs: impl Iterator<Item = impl Iterator<Item = (*mut c_void, usize)>>,
    ) -> usize {
        self.iovs.clear();
        self.ends.clear();
        for parts in msgs.take(self.hdrs.len()) {
            self.iovs.extend(parts.map(|(base, len)| libc::iovec {
                iov_base: base,
                iov_len: len,
            }));
            self.ends.push(self.iovs.len());
        }
        let mut start = 0;
        for (h, &end) in self.hdrs.iter_mut().zip(&self.ends) {
            h.msg_len = 0;
            h.msg_hdr.msg_name = ptr::null_mut();
            h.msg_hdr.msg_namelen = 0;
            h.msg_hdr.msg_iov = self.iovs[start..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = end - start;
            h.msg_hdr.msg_control = ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            start = end;
        }
        self.ends.len()
    }

    /// Receives up to one message into each list of buffers of `msgs`, filled in
    /// order, in one `recvmmsg(2)`, without waiting. Returns how many arrived;
    /// [`MmsgV::received`] tells their lengths. `EAGAIN` when none was waiting.
    pub fn recv<'a, M>(
        &mut self,
        fd: BorrowedFd<'_>,
        msgs: impl Iterator<Item = M>,
    ) -> io::Result<usize>
    where
        M: Iterator<Item = &'a mut [u8]>,
    {
        let n = self.fill(msgs.map(|m| m.map(|b| (b.as_mut_ptr().cast::<c_void>(), b.len()))));
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: headers 0..n point at iovecs in `self.iovs` (not resized since),
        // which point at the caller's buffers, borrowed mutably for 'a, covering
        // this call. The kernel writes only within them and the headers.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// The `i`th message of the last [`MmsgV::recv`].
    pub fn received(&self, i: usize) -> Option<Received> {
        let h = self.hdrs.get(i)?;
        Some(Received {
            len: h.msg_len as usize,
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
    }

    /// Sends each list of pieces of `msgs` as one message, in one
    /// `sendmmsg(2)`, without waiting. Returns how many the kernel took, from the
    /// first; an error means it took none, and is about the first.
    pub fn send<'a, M>(
        &mut self,
        fd: BorrowedFd<'_>,
        msgs: impl Iterator<Item = M>,
    ) -> io::Result<usize>
    where
        M: Iterator<Item = &'a [u8]>,
    {
        // The kernel only reads send buffers; iovec just has no const form.
        let n =
            self.fill(msgs.map(|m| m.map(|b| (b.as_ptr().cast_mut().cast::<c_void>(), b.len()))));
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: headers 0..n point at iovecs in `self.iovs`, which point at the
        // caller's pieces, borrowed for 'a (covering this call); the kernel reads
        // them and writes only the headers' msg_len.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::bpf_classic::{Insn, ACCEPT, DROP};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn vectored_messages_join_and_split_their_pieces() {
        let (a, b) = pair();
        let mut tx = MmsgV::new(4);
        let msgs: [&[&[u8]]; 2] = [&[b"head:", b"one", b"two"], &[b"alone"]];
        assert_eq!(
            tx.send(a.as_fd(), msgs.iter().map(|m| m.iter().copied()))
                .unwrap(),
            2
        );
        let mut rx = MmsgV::new(4);
        let (mut h, mut t) = ([[0u8; 4]; 2], [[0u8; 16]; 2]);
        let n = rx
            .recv(
                b.as_fd(),
                h.iter_mut()
                    .zip(t.iter_mut())
                    .map(|(h, t)| [&mut h[..], &mut t[..]].into_iter()),
            )
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(rx.received(0).unwrap().len, 11);
        assert_eq!((&h[0], &t[0][..7]), (b"head", &b":onetwo"[..]));
        assert_eq!((&h[1], &t[1][..1]), (b"alon", &b"e"[..]));
        assert_eq!(
            tx.send(
                a.as_fd(),
                std::iter::empty::<std::slice::Iter<'_, &[u8]>>().map(|m| m.copied())
            )
            .unwrap(),
            0
        );
    }

    #[test]
    fn batches_go_through_in_one_call_each() {
        let (a, b) = pair();
        let mut tx = Mmsg::new(4);
        let frames: [&[u8]; 3] = [b"one", b"three", b"twenty-two bytes long."];
        assert_eq!(tx.send(a.as_fd(), frames.iter().copied()).unwrap(), 3);

        let mut rx = Mmsg::new(8);
        let mut bufs = [[0u8; 8]; 5];
        let n = rx
            .recv(b.as_fd(), bufs.iter_mut().map(|b| &mut b[..]))
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            rx.received(0),
            Some(Received {
                len: 3,
                truncated: false
            })
        );
        assert_eq!(&bufs[1][..5], b"three");
        let long = rx.received(2).unwrap();
        assert!(long.truncated, "{long:?}");
        assert_eq!(&bufs[2], b"twenty-t");
        assert!(rx.received(8).is_none());

        // Nothing left: EAGAIN, not a block.
        let e = rx
            .recv(b.as_fd(), bufs.iter_mut().map(|b| &mut b[..]))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        // No buffers, no call.
        assert_eq!(rx.recv(b.as_fd(), std::iter::empty()).unwrap(), 0);
    }

    #[test]
    fn more_frames_than_capacity_are_left_for_the_next_call() {
        let (a, b) = pair();
        let mut tx = Mmsg::new(2);
        let frames: [&[u8]; 3] = [b"a", b"b", b"c"];
        assert_eq!(tx.send(a.as_fd(), frames.iter().copied()).unwrap(), 2);
        assert_eq!(drain(b.as_fd()).unwrap(), 2);
    }

    #[test]
    fn filters_attach_and_drop() {
        let (a, b) = pair();
        attach_filter(b.as_fd(), &[Insn::ret(DROP)]).unwrap();
        let mut tx = Mmsg::new(1);
        tx.send(a.as_fd(), [&b"dropped"[..]].into_iter()).unwrap();
        assert_eq!(drain(b.as_fd()).unwrap(), 0);
        attach_filter(b.as_fd(), &[Insn::ret(ACCEPT)]).unwrap();
        tx.send(a.as_fd(), [&b"kept"[..]].into_iter()).unwrap();
        assert_eq!(drain(b.as_fd()).unwrap(), 1);
        // A program that falls off its end is refused by the kernel.
        let bad = [Insn::stmt(crate::sys::bpf_classic::LD, 0)];
        assert!(attach_filter(b.as_fd(), &bad).is_err());
    }
}
