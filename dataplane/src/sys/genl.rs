//! Generic netlink, as far as Sluice needs it: the `netdev` family's `dev-get`
//! (Linux 6.3), which tells which XDP features a device's driver offers,
//! without attaching anything to the device.
//!
//! The messages are small and fixed, so they are built and read here by hand:
//! a `nlmsghdr`, a `genlmsghdr`, then attributes (`nlattr`), each padded to 4
//! bytes.

use std::io;

use netlink_sys::{Socket, SocketAddr};
use nix::libc;

/// `NETLINK_GENERIC`.
const NETLINK_GENERIC: isize = 16;
/// `GENL_ID_CTRL`: the controller family, which names the others.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
/// `nla_type` without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `NETDEV_XDP_ACT_BASIC`: the driver runs XDP programs itself.
pub const XDP_ACT_BASIC: u64 = 1 << 0;
/// `NETDEV_XDP_ACT_XSK_ZEROCOPY`: AF_XDP sockets can bind zero-copy.
pub const XDP_ACT_XSK_ZEROCOPY: u64 = 1 << 3;

/// The XDP features (`NETDEV_XDP_ACT_*`) the driver of link `ifindex`
/// offers, in the calling thread's namespace; `None` where the kernel has no
/// `netdev` family (before Linux 6.3), so nothing can be known this way.
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let mut sock = Socket::new(NETLINK_GENERIC)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let family = match transact(
        &mut sock,
        1,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        CTRL_ATTR_FAMILY_NAME,
        b"netdev\0",
    ) {
        Ok(reply) => attr(&reply, CTRL_ATTR_FAMILY_ID)
            .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
            .ok_or_else(|| bad("the controller's answer has no family id"))?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let reply = transact(
        &mut sock,
        2,
        family,
        NETDEV_CMD_DEV_GET,
        NETDEV_A_DEV_IFINDEX,
        &ifindex.to_ne_bytes(),
    )?;
    let features = attr(&reply, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
        .ok_or_else(|| bad("the netdev answer has no XDP features"))?;
    Ok(Some(features))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A request of one attribute, as bytes.
fn request(seq: u32, family: u16, cmd: u8, attr_type: u16, value: &[u8]) -> Vec<u8> {
    let attr_len = 4 + value.len();
    let len = NLMSG_HDRLEN + GENL_HDRLEN + pad4(attr_len);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    m.extend_from_slice(&[cmd, 1, 0, 0]); // command, version 1, reserved
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&attr_type.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(len, 0);
    m
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Sends a request and returns the attributes of its answer (what follows
/// the generic netlink header), or the error the kernel answered with.
fn transact(
    sock: &mut Socket,
    seq: u32,
    family: u16,
    cmd: u8,
    attr_type: u16,
    value: &[u8],
) -> io::Result<Vec<u8>> {
    sock.send(&request(seq, family, cmd, attr_type, value), 0)?;
    let mut rx = Vec::with_capacity(8192);
    loop {
        rx.clear();
        sock.recv(&mut rx, 0)?;
        if let Some(answer) = answer_to(&rx, seq)? {
            return Ok(answer.to_vec());
        }
    }
}

/// In a buffer of received messages, the attributes of the answer to `seq`:
/// `Ok(None)` if it holds none, an error for a kernel error or a message that
/// does not parse.
fn answer_to(mut buf: &[u8], seq: u32) -> io::Result<Option<&[u8]>> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let this_seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad("a netlink message longer than what was received"));
        }
        let body = &buf[NLMSG_HDRLEN..len];
        buf = &buf[pad4(len).min(buf.len())..];
        if this_seq != seq {
            continue; // a late answer to an earlier request
        }
        match kind {
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .ok_or_else(|| bad("a netlink error without its code"))?;
                if code == 0 {
                    continue; // an acknowledgement
                }
                return Err(io::Error::from_raw_os_error(-code));
            }
            NLMSG_DONE => return Err(bad("no answer before the end of the dump")),
            _ => {
                return body
                    .get(GENL_HDRLEN..)
                    .map(Some)
                    .ok_or_else(|| bad("a generic netlink message without its header"))
            }
        }
    }
    Ok(None)
}

/// The value of the first attribute of type `want` among `attrs`.
fn attr(mut attrs: &[u8], want: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == want {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[pad4(len).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_laid_out_as_the_kernel_reads_it() {
        let m = request(
            7,
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            CTRL_ATTR_FAMILY_NAME,
            b"netdev\0",
        );
        // 16 + 4 + (4 + 7, padded to 12)
        assert_eq!(m.len(), 32);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 32);
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().unwrap()),
            GENL_ID_CTRL
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(m[16..20], [CTRL_CMD_GETFAMILY, 1, 0, 0]);
        assert_eq!(u16::from_ne_bytes(m[20..22].try_into().unwrap()), 11);
        assert_eq!(&m[24..31], b"netdev\0");
        assert_eq!(m[31], 0);
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(pad4(len), 0);
        m
    }

    #[test]
    fn answers_errors_and_attributes_are_read_and_bad_input_refused() {
        // genl header, then attribute 1 (u16 0x1d, padded) and attribute 3 (u64).
        let mut body = vec![1, 2, 0, 0];
        body.extend_from_slice(&6u16.to_ne_bytes());
        body.extend_from_slice(&1u16.to_ne_bytes());
        body.extend_from_slice(&0x1du16.to_ne_bytes());
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&12u16.to_ne_bytes());
        body.extend_from_slice(&(3u16 | 0x8000).to_ne_bytes()); // a flag bit set
        body.extend_from_slice(&0x4bu64.to_ne_bytes());
        let mut buf = message(0x1d, 1, &[0, 0, 0, 0]); // another request's answer
        buf.extend(message(0x1d, 2, &body));
        let attrs = answer_to(&buf, 2).unwrap().unwrap();
        assert_eq!(attr(attrs, 1), Some(&0x1du16.to_ne_bytes()[..]));
        assert_eq!(attr(attrs, 3), Some(&0x4bu64.to_ne_bytes()[..]));
        assert_eq!(attr(attrs, 2), None);
        assert_eq!(answer_to(&buf, 9).unwrap(), None);

        let err = message(NLMSG_ERROR, 4, &(-libc::ENOENT).to_ne_bytes());
        let e = answer_to(&err, 4).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));

        // Truncated or lying lengths: an error or nothing, never a panic.
        for cut in 0..buf.len() {
            let _ = answer_to(&buf[..cut], 2);
        }
        assert!(answer_to(&buf[..buf.len() - 4], 2).is_err());
        assert_eq!(attr(&[8, 0, 1, 0, 1], 1), None);
        assert_eq!(attr(&[2, 0, 1, 0], 1), None);
    }

    #[test]
    fn loopback_offers_no_zero_copy() {
        let lo = nix::net::if_::if_nametoindex("lo").expect("lo");
        match xdp_features(lo) {
            Ok(Some(f)) => assert_eq!(f & XDP_ACT_XSK_ZEROCOPY, 0, "features {f:#x}"),
            Ok(None) => {} // a kernel before 6.3
            Err(e) => panic!("netdev dev-get on lo: {e}"),
        }
    }
}
