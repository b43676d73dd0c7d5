//! Link configuration over rtnetlink: move a link into a namespace, rename it, set
//! its MAC, MTU and state, add IPv4 addresses and routes, delete it. What the
//! daemon needs to wire a pod's TAP inside the pod's namespace.
//!
//! Synchronous on purpose: the message types come from `netlink-packet-route` and
//! the socket from `netlink-sys` without its async features. `rtnetlink` would
//! wrap the same types but pulls in tokio, and each operation here is one request
//! and one acknowledgement from a plain control thread. Shelling out to `ip`
//! would lose the errno and cost a process per step.
//!
//! A [`Netlink`] socket acts in the namespace it was opened in, whichever thread
//! uses it later: open it with [`Netlink::open_in`] to configure a pod.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::netns::{in_netns, NetNs, NetnsError};
use super::valid_ifname;

/// The pod's default gateway in the Calico convention: a link-local address no
/// host owns; Sluice answers ARP for it on the pod's TAP.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What went wrong with a netlink request, on which link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink route socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op} on {target}: {source}")]
    Request {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} on {target}: unreadable reply: {detail}")]
    Decode {
        op: &'static str,
        target: String,
        detail: String,
    },
    #[error("{op}: interface name {name:?} is not 1 to 15 bytes without '/', ':' or spaces")]
    InvalidName { op: &'static str, name: String },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl LinkError {
    /// The errno the kernel answered with, if that is what went wrong (`ENODEV`:
    /// no such link, `EEXIST`: name taken).
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Request { source, .. } | LinkError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// An IPv4 route through one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteV4 {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    /// `None`: the destination is on the link (scope link).
    pub gateway: Option<Ipv4Addr>,
    pub ifindex: u32,
    /// Use the gateway even though no address of the link covers it.
    pub onlink: bool,
}

impl RouteV4 {
    /// `ip route replace DST/LEN dev IFINDEX scope link`.
    pub fn link(dst: Ipv4Addr, prefix_len: u8, ifindex: u32) -> RouteV4 {
        RouteV4 {
            dst,
            prefix_len,
            gateway: None,
            ifindex,
            onlink: false,
        }
    }

    /// `ip route replace DST/LEN via GW dev IFINDEX onlink`.
    pub fn via(dst: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr, ifindex: u32) -> RouteV4 {
        RouteV4 {
            dst,
            prefix_len,
            gateway: Some(gateway),
            ifindex,
            onlink: true,
        }
    }

    /// `default via GW dev IFINDEX onlink`.
    pub fn default_via(gateway: Ipv4Addr, ifindex: u32) -> RouteV4 {
        RouteV4::via(Ipv4Addr::UNSPECIFIED, 0, gateway, ifindex)
    }
}

/// Longest link alias the kernel keeps (`IFALIASZ` less its NUL).
pub const MAX_ALIAS_LEN: usize = 255;

/// One link as [`Netlink::links`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    /// `IFLA_IFALIAS`, when set.
    pub alias: Option<String>,
    /// The link-layer address, when it is a MAC.
    pub mac: Option<[u8; 6]>,
    /// The link's kind as `ip -d link` names it (`"tun"` for TUN/TAP devices).
    pub kind: Option<String>,
}

impl LinkSummary {
    fn from_message(l: &LinkMessage) -> LinkSummary {
        let mut s = LinkSummary {
            index: l.header.index,
            name: String::new(),
            alias: None,
            mac: None,
            kind: None,
        };
        for attr in &l.attributes {
            match attr {
                LinkAttribute::IfName(n) => s.name.clone_from(n),
                LinkAttribute::IfAlias(a) => s.alias = Some(a.clone()),
                LinkAttribute::Address(a) => s.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            s.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// A blocking rtnetlink route socket bound to one network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

const RX_BUF: usize = 64 * 1024;

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn open() -> Result<Netlink, LinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(LinkError::Socket)?;
        sock.bind_auto().map_err(LinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(LinkError::Socket)?;
        // Errors then carry the kernel's message; a kernel without it ignores it.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink {
            sock,
            seq: 0,
            rx: Vec::with_capacity(RX_BUF),
        })
    }

    /// A socket in `ns`, opened on a short-lived thread: the caller's thread stays
    /// where it is, and the socket keeps acting in `ns`.
    pub fn open_in(ns: &NetNs) -> Result<Netlink, LinkError> {
        in_netns(ns, Netlink::open)?
    }

    /// The index of the link called `name`.
    pub fn ifindex(&mut self, name: &str) -> Result<u32, LinkError> {
        const OP: &str = "get link";
        check_name(OP, name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let mut index = None;
        self.request(OP, name, RouteNetlinkMessage::GetLink(msg), 0, |reply| {
            if let RouteNetlinkMessage::NewLink(l) = reply {
                index = Some(l.header.index);
            }
        })?;
        index.ok_or_else(|| LinkError::Decode {
            op: OP,
            target: name.to_owned(),
            detail: "acknowledged without a link".into(),
        })
    }

    /// Moves the link into `ns`, renaming it to `new_name` on the way when given
    /// (one step, so the old name never has to be free there).
    pub fn move_to_netns(
        &mut self,
        ifindex: u32,
        ns: &NetNs,
        new_name: Option<&str>,
    ) -> Result<(), LinkError> {
        const OP: &str = "move link to namespace";
        let mut msg = link_msg(ifindex);
        msg.attributes
            .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        if let Some(name) = new_name {
            check_name(OP, name)?;
            msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        }
        self.set_link(OP, ifindex, msg)
    }

    pub fn rename(&mut self, ifindex: u32, name: &str) -> Result<(), LinkError> {
        const OP: &str = "rename link";
        check_name(OP, name)?;
        let mut msg = link_msg(ifindex);
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.set_link(OP, ifindex, msg)
    }

    pub fn set_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), LinkError> {
        let mut msg = link_msg(ifindex);
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link("set link MAC", ifindex, msg)
    }

    pub fn set_mtu(&mut self, ifindex: u32, mtu: u32) -> Result<(), LinkError> {
        let mut msg = link_msg(ifindex);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link("set link MTU", ifindex, msg)
    }

    /// Sets the length of the device's transmit queue (`txqueuelen`). For a TAP
    /// that is the ring of frames waiting for the reader: what the sender
    /// queues past it is dropped. Set it while the link is down: on a link that
    /// is up the kernel may wait out an RCU grace period to swap the qdisc.
    pub fn set_tx_queue_len(&mut self, ifindex: u32, len: u32) -> Result<(), LinkError> {
        let mut msg = link_msg(ifindex);
        msg.attributes.push(LinkAttribute::TxQueueLen(len));
        self.set_link("set link txqueuelen", ifindex, msg)
    }

    /// Sets the link administratively up or down.
    pub fn set_up(&mut self, ifindex: u32, up: bool) -> Result<(), LinkError> {
        let mut msg = link_msg(ifindex);
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(
            if up { "set link up" } else { "set link down" },
            ifindex,
            msg,
        )
    }

    pub fn delete_link(&mut self, ifindex: u32) -> Result<(), LinkError> {
        const OP: &str = "delete link";
        let target = format!("ifindex {ifindex}");
        self.request(
            OP,
            &target,
            RouteNetlinkMessage::DelLink(link_msg(ifindex)),
            0,
            |_| (),
        )
    }

    /// Adds `addr/prefix_len` to the link, or leaves it if already there
    /// (`ip addr replace`), so a retried configuration does not fail.
    pub fn add_ipv4(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        const OP: &str = "add IPv4 address";
        let target = format!("ifindex {ifindex}");
        if prefix_len > 32 {
            return Err(LinkError::Request {
                op: OP,
                target,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("prefix /{prefix_len}"),
                ),
            });
        }
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.index = ifindex;
        msg.attributes.push(AddressAttribute::Local(addr.into()));
        msg.attributes.push(AddressAttribute::Address(addr.into()));
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request(
            OP,
            &target,
            RouteNetlinkMessage::NewAddress(msg),
            flags,
            |_| (),
        )
    }

    /// Adds the route, replacing one to the same destination (`ip route replace`).
    pub fn add_route_v4(&mut self, route: &RouteV4) -> Result<(), LinkError> {
        const OP: &str = "add IPv4 route";
        let target = format!(
            "{}/{} dev ifindex {}",
            route.dst, route.prefix_len, route.ifindex
        );
        if route.prefix_len > 32 {
            return Err(LinkError::Request {
                op: OP,
                target,
                source: io::Error::new(io::ErrorKind::InvalidInput, "prefix longer than /32"),
            });
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = match route.gateway {
            None => RouteScope::Link,
            Some(_) => RouteScope::Universe,
        };
        if route.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if route.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(route.dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(route.ifindex));
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.request(
            OP,
            &target,
            RouteNetlinkMessage::NewRoute(msg),
            flags,
            |_| (),
        )
    }

    /// The pod side of a pod's link, Calico's way: `addr/32` on the link, a
    /// scope-link route to [`POD_GATEWAY`] and the default route via it (onlink),
    /// link up. Every step may be repeated.
    pub fn configure_pod_link(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<(), LinkError> {
        self.set_up(ifindex, true)?;
        self.add_ipv4(ifindex, addr, 32)?;
        self.add_route_v4(&RouteV4::link(POD_GATEWAY, 32, ifindex))?;
        self.add_route_v4(&RouteV4::default_via(POD_GATEWAY, ifindex))
    }

    /// Sets the link's alias (`IFLA_IFALIAS`, `ip link set dev X alias TEXT`): free
    /// text the kernel keeps with the link, at most [`MAX_ALIAS_LEN`] bytes.
    pub fn set_alias(&mut self, ifindex: u32, alias: &str) -> Result<(), LinkError> {
        const OP: &str = "set link alias";
        if alias.len() > MAX_ALIAS_LEN || alias.contains('\0') {
            return Err(LinkError::Request {
                op: OP,
                target: format!("ifindex {ifindex}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "alias of {} bytes: expected at most {MAX_ALIAS_LEN} without NUL",
                        alias.len()
                    ),
                ),
            });
        }
        let mut msg = link_msg(ifindex);
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_owned()));
        self.set_link(OP, ifindex, msg)
    }

    /// Every link of the socket's namespace (`ip link show`).
    pub fn links(&mut self) -> Result<Vec<LinkSummary>, LinkError> {
        let mut out = Vec::new();
        self.request(
            "list links",
            "all links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            |reply| {
                if let RouteNetlinkMessage::NewLink(l) = reply {
                    out.push(LinkSummary::from_message(&l));
                }
            },
        )?;
        Ok(out)
    }

    fn set_link(
        &mut self,
        op: &'static str,
        ifindex: u32,
        msg: LinkMessage,
    ) -> Result<(), LinkError> {
        let target = format!("ifindex {ifindex}");
        self.request(op, &target, RouteNetlinkMessage::SetLink(msg), 0, |_| ())
    }

    /// Sends one request with an acknowledgement asked for, hands every reply
    /// message to `on_reply`, and returns when the acknowledgement arrives.
    fn request(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), LinkError> {
        let fail = |source: io::Error| LinkError::Request {
            op,
            target: target.to_owned(),
            source,
        };
        let bad = |detail: String| LinkError::Decode {
            op,
            target: target.to_owned(),
            detail,
        };

        self.seq = self.seq.wrapping_add(1);
        transact(
            &self.sock,
            &mut self.rx,
            self.seq,
            msg,
            flags,
            &mut on_reply,
        )
        .map_err(|e| match e {
            Transact::Io(source) => fail(source),
            Transact::Decode(detail) => bad(detail),
        })
    }
}

/// How [`transact`] failed.
#[derive(Debug)]
pub(crate) enum Transact {
    /// The socket failed, or the kernel answered with an error.
    Io(io::Error),
    /// The answer could not be decoded.
    Decode(String),
}

/// Sends one rtnetlink request with an acknowledgement asked for (plus
/// `flags`), hands every reply of sequence number `seq` to `on_reply`, and
/// returns when the acknowledgement (or an error) arrives. Shared by link
/// configuration here and XDP attachment in [`super::bpf`].
pub(crate) fn transact(
    sock: &Socket,
    rx: &mut Vec<u8>,
    seq: u32,
    msg: RouteNetlinkMessage,
    flags: u16,
    on_reply: &mut dyn FnMut(RouteNetlinkMessage),
) -> Result<(), Transact> {
    let bad = |detail: String| Transact::Decode(detail);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = seq;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    sock.send(&out, 0).map_err(Transact::Io)?;

    loop {
        rx.clear();
        sock.recv(rx, 0).map_err(Transact::Io)?;
        let mut at = 0;
        while at < rx.len() {
            let chunk = &rx[at..];
            let len = NetlinkBuffer::new_checked(chunk)
                .map_err(|e| bad(e.to_string()))?
                .length() as usize;
            let this = chunk
                .get(..len)
                .ok_or_else(|| bad(format!("message of {len} bytes truncated")))?;
            // Messages are padded to 4 bytes.
            at += (len + 3) & !3;
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(this)
                .map_err(|e| bad(e.to_string()))?;
            if reply.header.sequence_number != seq {
                continue; // a late answer to an earlier request
            }
            match reply.payload {
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(Transact::Io(e.to_io())),
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::InnerMessage(m) => on_reply(m),
                _ => {}
            }
        }
    }
}

fn link_msg(ifindex: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg
}

fn check_name(op: &'static str, name: &str) -> Result<(), LinkError> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(LinkError::InvalidName {
            op,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_bad_names_are_refused() {
        // Any namespace has `lo`; opening a route socket needs no privilege.
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.ifindex("lo").unwrap(), 1);
        let e = nl.ifindex("sluice-none0").unwrap_err();
        assert_eq!(e.errno(), Some(nix::libc::ENODEV), "{e}");
        assert!(matches!(
            nl.rename(1, "a/b"),
            Err(LinkError::InvalidName { .. })
        ));
    }

    #[test]
    fn link_dump_lists_loopback_and_long_aliases_are_refused() {
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        let lo = links.iter().find(|l| l.index == 1).expect("lo listed");
        assert_eq!(lo.name, "lo");
        let e = nl.set_alias(1, &"x".repeat(MAX_ALIAS_LEN + 1)).unwrap_err();
        assert!(e.to_string().contains("at most 255"), "{e}");
    }

    #[test]
    fn routes_are_built_the_calico_way() {
        let r = RouteV4::default_via(POD_GATEWAY, 3);
        assert_eq!(r.prefix_len, 0);
        assert!(r.onlink);
        let l = RouteV4::link(POD_GATEWAY, 32, 3);
        assert_eq!(l.gateway, None);
    }
}
