//! Packet trace (`sluicectl trace`): the next N packets that match a filter
//! are followed through the stages, and each stage's decision is recorded
//! (VPP's `trace add`, in spirit).
//!
//! Off, tracing costs one predictable branch per batch: the pipeline runs its
//! stages through an observer type whose hooks are empty and compiled away.
//! Armed, the batch takes a separate, slower path that records a [`Step`] for
//! each marked packet after every stage that handled it. Everything here runs
//! on that cold path, so it favours clarity over speed; it reads frames with
//! bounds-checked accessors and never trusts a length field.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::buf::{Packet, PortId};
use crate::drop::DropReason;
use crate::flow::FlowKey;
use crate::stage::Next;
use crate::table::{NextHop, Tables};

/// The most packets one trace follows (per worker).
pub const MAX_TRACE: u32 = 10_000;

/// A malformed trace filter, naming the token that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("trace filter: unknown word {0:?}: expected src, dst, host, port, sport, dport, proto, tcp, udp, icmp, sctp or and")]
    UnknownWord(String),
    #[error("trace filter: {0:?} needs a value after it")]
    MissingValue(&'static str),
    #[error("trace filter: {what} {value:?}: expected {expected}")]
    BadValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// An IPv4 prefix as the filter matches it (host bits ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: u32,
    mask: u32,
}

impl Net {
    fn contains(self, a: u32) -> bool {
        a & self.mask == self.addr
    }
}

impl FromStr for Net {
    type Err = ();

    fn from_str(s: &str) -> Result<Net, ()> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| ())?),
            None => (s, 32),
        };
        if len > 32 {
            return Err(());
        }
        let addr = u32::from(a.parse::<Ipv4Addr>().map_err(|_| ())?);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Net {
            addr: addr & mask,
            mask,
        })
    }
}

/// Which packets to trace: every given term must match (an empty filter
/// matches every IPv4 packet, and ARP). Tunnelled packets match on their inner
/// header, so one filter follows a flow on both nodes.
///
/// Syntax, words separated by spaces, `and` optional: `src A[/LEN]`,
/// `dst A[/LEN]`, `host A[/LEN]` (either side), `port N` (either side),
/// `sport N`, `dport N`, `proto tcp|udp|icmp|sctp|N`, or just `tcp`, `udp`,
/// `icmp`, `sctp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    src: Option<Net>,
    dst: Option<Net>,
    host: Option<Net>,
    port: Option<u16>,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<u8>,
    /// Only packets received on this port.
    in_port: Option<PortId>,
}

impl Filter {
    /// Narrows the filter to packets received on `port`.
    pub fn on_port(mut self, port: PortId) -> Filter {
        self.in_port = Some(port);
        self
    }

    /// Whether a packet received on `port` is to be traced.
    pub fn matches_port(&self, port: PortId) -> bool {
        self.in_port.is_none_or(|p| p == port)
    }

    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let mut f = Filter::default();
        let mut words = expr.split_whitespace();
        while let Some(w) = words.next() {
            let mut value =
                |what: &'static str| words.next().ok_or(FilterError::MissingValue(what));
            let net = |what: &'static str, v: &str| {
                v.parse::<Net>().map_err(|()| FilterError::BadValue {
                    what,
                    value: v.to_owned(),
                    expected: "an IPv4 address or prefix such as 198.19.0.5 or 198.19.0.0/24",
                })
            };
            let port = |what: &'static str, v: &str| {
                v.parse::<u16>().map_err(|_| FilterError::BadValue {
                    what,
                    value: v.to_owned(),
                    expected: "a port number 0..=65535",
                })
            };
            match w.to_ascii_lowercase().as_str() {
                "and" => {}
                "src" => f.src = Some(net("src", value("src")?)?),
                "dst" => f.dst = Some(net("dst", value("dst")?)?),
                "host" => f.host = Some(net("host", value("host")?)?),
                "port" => f.port = Some(port("port", value("port")?)?),
                "sport" => f.sport = Some(port("sport", value("sport")?)?),
                "dport" => f.dport = Some(port("dport", value("dport")?)?),
                "proto" => {
                    let v = value("proto")?;
                    f.proto = Some(protocol(v).ok_or_else(|| FilterError::BadValue {
                        what: "proto",
                        value: v.to_owned(),
                        expected: "tcp, udp, icmp, sctp or a protocol number 0..=255",
                    })?);
                }
                other => match protocol(other).filter(|_| other.parse::<u8>().is_err()) {
                    Some(p) => f.proto = Some(p),
                    None => return Err(FilterError::UnknownWord(w.to_owned())),
                },
            }
        }
        Ok(f)
    }

    /// Whether a packet with this (inner) 5-tuple is to be traced. `None`:
    /// not IPv4 (ARP and the like), matched only by a filter without terms.
    pub fn matches(&self, flow: Option<&FlowKey>) -> bool {
        let Some(k) = flow else {
            return Filter {
                in_port: None,
                ..self.clone()
            } == Filter::default();
        };
        self.src.is_none_or(|n| n.contains(k.src))
            && self.dst.is_none_or(|n| n.contains(k.dst))
            && self
                .host
                .is_none_or(|n| n.contains(k.src) || n.contains(k.dst))
            && self.proto.is_none_or(|p| p == k.proto)
            && self.port.is_none_or(|p| p == k.sport || p == k.dport)
            && self.sport.is_none_or(|p| p == k.sport)
            && self.dport.is_none_or(|p| p == k.dport)
    }
}

fn protocol(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "sctp" => Some(132),
        n => n.parse().ok(),
    }
}

/// One stage's decision for a traced packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The stage that ran (its VPP-style node name).
    pub stage: &'static str,
    /// Where it sent the packet: the next stage, `tx` or `drop`.
    pub next: &'static str,
    /// What it decided: the route, the encap header, the drop reason, ...
    pub detail: String,
    /// The drop reason, when `next` is `drop`.
    pub drop: Option<DropReason>,
}

/// A packet followed through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traced {
    pub in_port: PortId,
    /// Frame length on arrival.
    pub len: usize,
    /// The frame as it arrived, in words (outer and inner headers).
    pub summary: String,
    /// The (inner) 5-tuple the filter matched; `None` for non-IPv4 frames.
    pub flow: Option<FlowKey>,
    pub steps: Vec<Step>,
    /// Where it ended: the port it was queued on, or `None` if dropped.
    pub out_port: Option<PortId>,
}

/// A worker's armed trace.
#[derive(Debug)]
pub struct Tracer {
    filter: Filter,
    /// Packets still to be marked.
    remaining: u32,
    /// Monotonic time (the pipeline's `now`) after which the trace disarms.
    deadline: u64,
    /// Batch indices of the packets marked in the current batch, and their
    /// records (same order).
    marked: Vec<usize>,
    current: Vec<Traced>,
    /// The stage each marked packet was at before the stage that just ran.
    before: Vec<u8>,
    /// Finished records, waiting for [`crate::pipeline::Pipeline::take_traces`].
    done: Vec<Traced>,
}

impl Tracer {
    pub fn new(filter: Filter, count: u32, deadline: u64) -> Tracer {
        Tracer {
            filter,
            remaining: count.min(MAX_TRACE),
            deadline,
            marked: Vec::new(),
            current: Vec::new(),
            before: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Whether it has nothing more to do (count reached or deadline passed)
    /// and nothing left to hand over.
    pub fn finished(&self, now: u64) -> bool {
        (self.remaining == 0 || now > self.deadline) && self.done.is_empty()
    }

    /// Marks the packets of a new batch received on `port` that match, up to
    /// the count left.
    /// Returns whether any packet was marked.
    pub(crate) fn start(&mut self, pkts: &[Packet], port: PortId, now: u64) -> bool {
        self.marked.clear();
        self.current.clear();
        if now > self.deadline {
            self.remaining = 0;
        }
        if !self.filter.matches_port(port) {
            return false;
        }
        for (i, p) in pkts.iter().enumerate() {
            if self.remaining == 0 {
                break;
            }
            let frame = p.data();
            let flow = peek_flow(frame, port == PortId::UPLINK);
            if !self.filter.matches(flow.as_ref()) {
                continue;
            }
            self.remaining -= 1;
            self.marked.push(i);
            self.current.push(Traced {
                in_port: port,
                len: frame.len(),
                summary: describe_frame(frame),
                flow,
                steps: Vec::new(),
                out_port: None,
            });
        }
        !self.marked.is_empty()
    }

    /// Before a stage runs: remembers where each marked packet stands.
    pub(crate) fn before(&mut self, pkts: &[Packet]) {
        self.before.clear();
        self.before
            .extend(self.marked.iter().map(|&i| pkts[i].meta.next));
    }

    /// After `stage` ran: a step for each marked packet it handled.
    pub(crate) fn after(&mut self, stage: Next, t: &Tables, pkts: &[Packet]) {
        for (k, &i) in self.marked.iter().enumerate() {
            if self.before[k] != stage as u8 {
                continue;
            }
            let p = &pkts[i];
            let next = Next::from_u8(p.meta.next);
            let drop = (next == Some(Next::Drop)).then_some(p.meta.drop);
            let detail = detail(stage, t, p, drop);
            self.current[k].steps.push(Step {
                stage: stage.name(),
                next: next.map_or("?", Next::name),
                detail,
                drop,
            });
        }
    }

    /// At the end of the batch: the fate of each marked packet, then the
    /// records move to `done`.
    pub(crate) fn finish(&mut self, pkts: &[Packet]) {
        for (k, &i) in self.marked.iter().enumerate() {
            let p = &pkts[i];
            if p.meta.next == Next::Tx as u8 {
                self.current[k].out_port = Some(p.meta.out_port);
            }
        }
        self.done.append(&mut self.current);
        self.marked.clear();
    }

    /// Whether every packet it was asked for has been marked.
    pub fn exhausted(&self) -> bool {
        self.remaining == 0
    }

    pub(crate) fn take(&mut self) -> std::vec::Drain<'_, Traced> {
        self.done.drain(..)
    }
}

/// What a stage decided, in words, read from the packet as the stage left it.
fn detail(stage: Next, t: &Tables, p: &Packet, drop: Option<DropReason>) -> String {
    if let Some(r) = drop {
        return format!("drop: {}", r.name());
    }
    let k = p.meta.flow;
    match stage {
        Next::UplinkInput if p.meta.flags & crate::buf::Meta::FLAG_FROM_TUNNEL != 0 => {
            format!("decapsulated ({} mode)", t.node.mode)
        }
        Next::UplinkInput => "native (not encapsulated)".to_owned(),
        Next::EthInput => match Next::from_u8(p.meta.next) {
            Some(Next::Arp) => "arp".to_owned(),
            _ => "ipv4".to_owned(),
        },
        Next::Arp => "arp reply with the forwarder's MAC".to_owned(),
        Next::Ipv4Input => {
            let ttl = p
                .data()
                .get(usize::from(p.meta.l3) + 8)
                .copied()
                .unwrap_or(0);
            format!("{} ttl {ttl}", flow_text(&k))
        }
        Next::PolicyEgress | Next::PolicyIngress => "allow".to_owned(),
        Next::Lookup => route_text(t, k.dst),
        Next::LocalDelivery => match t.endpoints.by_ip(k.dst) {
            Some(ep) => format!(
                "to pod {} on port {}",
                k.dst_addr(),
                t.endpoints.get(ep).port
            ),
            None => format!("to port {}", p.meta.out_port),
        },
        Next::HostOutput => "to the host port".to_owned(),
        Next::VxlanEncap | Next::IpipEncap | Next::NativeOutput | Next::IcmpError => {
            format!("{}, out port {}", describe_frame(p.data()), p.meta.out_port)
        }
        Next::Drop | Next::Tx => String::new(),
    }
}

/// The route `dst` takes: the longest matching prefix and its next hop.
fn route_text(t: &Tables, dst: u32) -> String {
    let dst_ip = Ipv4Addr::from(dst);
    let best = t
        .routes
        .routes()
        .iter()
        .filter(|(p, _)| p.contains(dst_ip))
        .max_by_key(|(p, _)| p.prefix_len());
    let Some((prefix, nh)) = best else {
        return format!("no route to {dst_ip}");
    };
    let mut s = format!("route {prefix} via {nh}");
    if let Some(id) = nh.tunnel() {
        if let Some(tun) = t.tunnels.get(id) {
            let _ = write!(s, " ({})", describe_frame(tun.rewrite()));
        }
    }
    if *nh == NextHop::Local {
        if let Some(ep) = t.endpoints.by_ip(dst) {
            let _ = write!(s, " (pod on port {})", t.endpoints.get(ep).port);
        }
    }
    s
}

fn flow_text(k: &FlowKey) -> String {
    let proto = match k.proto {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        132 => "sctp".to_owned(),
        n => format!("proto {n}"),
    };
    if k.sport == 0 && k.dport == 0 {
        format!("{} > {} {proto}", k.src_addr(), k.dst_addr())
    } else if k.proto == 1 {
        format!("{} > {} {proto} id {}", k.src_addr(), k.dst_addr(), k.sport)
    } else {
        format!(
            "{}:{} > {}:{} {proto}",
            k.src_addr(),
            k.sport,
            k.dst_addr(),
            k.dport
        )
    }
}

/// Bounds-checked reads for the cold path.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }

    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8(at)?, self.u8(at + 1)?]))
    }

    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8(at)?,
            self.u8(at + 1)?,
            self.u8(at + 2)?,
            self.u8(at + 3)?,
        ]))
    }
}

/// An IPv4 header at `at`: (header length, protocol, src, dst, first fragment).
fn ipv4_at(b: &Bytes<'_>, at: usize) -> Option<(usize, u8, u32, u32, bool)> {
    let vihl = b.u8(at)?;
    if vihl >> 4 != 4 || vihl & 0xf < 5 {
        return None;
    }
    let hl = usize::from(vihl & 0xf) * 4;
    let first = b.u16(at + 6)? & 0x1fff == 0;
    Some((hl, b.u8(at + 9)?, b.u32(at + 12)?, b.u32(at + 16)?, first))
}

/// The 5-tuple the filter matches: the inner one for VXLAN (any UDP packet
/// to 4789 or 8472 arriving on the uplink) and IPIP, the only one otherwise.
pub fn peek_flow(frame: &[u8], from_uplink: bool) -> Option<FlowKey> {
    let b = Bytes(frame);
    if b.u16(12)? != 0x0800 {
        return None;
    }
    let outer = flow_at(&b, 14)?;
    if from_uplink {
        if outer.proto == 4 {
            let (hl, ..) = ipv4_at(&b, 14)?;
            return flow_at(&b, 14 + hl).or(Some(outer));
        }
        if outer.proto == 17 && matches!(outer.dport, 4789 | 8472) {
            let (hl, ..) = ipv4_at(&b, 14)?;
            let inner_eth = 14 + hl + 8 + 8;
            if b.u16(inner_eth + 12) == Some(0x0800) {
                return flow_at(&b, inner_eth + 14).or(Some(outer));
            }
        }
    }
    Some(outer)
}

fn flow_at(b: &Bytes<'_>, at: usize) -> Option<FlowKey> {
    let (hl, proto, src, dst, first) = ipv4_at(b, at)?;
    let mut k = FlowKey {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto,
    };
    if first {
        let l4 = at + hl;
        match proto {
            6 | 17 | 132 => {
                k.sport = b.u16(l4).unwrap_or(0);
                k.dport = b.u16(l4 + 2).unwrap_or(0);
            }
            1 if matches!(b.u8(l4), Some(0 | 8)) => {
                let id = b.u16(l4 + 4).unwrap_or(0);
                k.sport = id;
                k.dport = id;
            }
            _ => {}
        }
    }
    Some(k)
}

/// A frame in one line: Ethernet, then IPv4 / UDP / VXLAN / inner headers as
/// far as they parse.
pub fn describe_frame(frame: &[u8]) -> String {
    let mut s = String::new();
    let _ = describe_eth(&mut s, frame, 0, 2);
    s
}

fn mac_at(b: &Bytes<'_>, at: usize) -> Option<String> {
    let m = b.0.get(at..at + 6)?;
    Some(crate::wire::eth::MacAddr::from_bytes(m).to_string())
}

fn describe_eth(s: &mut String, frame: &[u8], at: usize, depth: u8) -> Option<()> {
    let b = Bytes(frame);
    let ty = b.u16(at + 12)?;
    write!(s, "{} > {}", mac_at(&b, at + 6)?, mac_at(&b, at)?).ok()?;
    match ty {
        0x0800 => {
            s.push_str(", ");
            describe_ipv4(s, frame, at + 14, depth)
        }
        0x0806 => {
            let op = b.u16(at + 14 + 6)?;
            let (spa, tpa) = (b.u32(at + 14 + 14)?, b.u32(at + 14 + 24)?);
            let what = if op == 1 { "request who-has" } else { "reply" };
            write!(
                s,
                ", arp {what} {} tell {}",
                Ipv4Addr::from(tpa),
                Ipv4Addr::from(spa)
            )
            .ok()
        }
        other => write!(s, ", ethertype 0x{other:04x}").ok(),
    }
}

fn describe_ipv4(s: &mut String, frame: &[u8], at: usize, depth: u8) -> Option<()> {
    let b = Bytes(frame);
    let (hl, proto, src, dst, first) = ipv4_at(&b, at)?;
    let ttl = b.u8(at + 8)?;
    let len = b.u16(at + 2)?;
    write!(
        s,
        "{} > {} ttl {ttl} len {len}",
        Ipv4Addr::from(src),
        Ipv4Addr::from(dst)
    )
    .ok()?;
    if !first {
        return s.write_str(" (fragment)").ok();
    }
    let l4 = at + hl;
    match proto {
        4 if depth > 0 => {
            s.push_str(", ipip: ");
            describe_ipv4(s, frame, l4, depth - 1)
        }
        17 => {
            let (sp, dp) = (b.u16(l4)?, b.u16(l4 + 2)?);
            write!(s, " udp {sp} > {dp}").ok()?;
            let flags = b.u8(l4 + 8);
            if depth > 0 && flags == Some(0x08) && b.0.len() >= l4 + 16 + 14 {
                let vni = b.u32(l4 + 12)? >> 8;
                write!(s, ", vxlan vni {vni}: ").ok()?;
                return describe_eth(s, frame, l4 + 16, depth - 1);
            }
            Some(())
        }
        6 => {
            let (sp, dp) = (b.u16(l4)?, b.u16(l4 + 2)?);
            let fl = b.u8(l4 + 13)?;
            let mut f = String::new();
            for (bit, c) in [
                (0x02, 'S'),
                (0x10, '.'),
                (0x01, 'F'),
                (0x04, 'R'),
                (0x08, 'P'),
            ] {
                if fl & bit != 0 {
                    f.push(c);
                }
            }
            write!(s, " tcp {sp} > {dp} [{f}]").ok()
        }
        1 => {
            let (ty, code) = (b.u8(l4)?, b.u8(l4 + 1)?);
            let what = match (ty, code) {
                (8, _) => "echo request".to_owned(),
                (0, _) => "echo reply".to_owned(),
                (3, 4) => format!("frag needed mtu {}", b.u16(l4 + 6)?),
                (11, _) => "time exceeded".to_owned(),
                (t, c) => format!("type {t} code {c}"),
            };
            write!(s, " icmp {what}").ok()
        }
        n => write!(s, " proto {n}").ok(),
    }
}

impl fmt::Display for Traced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "port {} ({} bytes): {}",
            self.in_port, self.len, self.summary
        )?;
        for st in &self.steps {
            writeln!(f, "  {:<15} -> {:<15} {}", st.stage, st.next, st.detail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_name_bad_words() {
        let f = Filter::parse("src 198.19.0.0/24 and udp dport 53").unwrap();
        let k = FlowKey {
            src: u32::from(Ipv4Addr::new(198, 19, 0, 9)),
            dst: 1,
            sport: 999,
            dport: 53,
            proto: 17,
        };
        assert!(f.matches(Some(&k)));
        assert!(!f.matches(Some(&FlowKey { dport: 54, ..k })));
        assert!(!f.matches(Some(&FlowKey { proto: 6, ..k })));
        assert!(!f.matches(None), "a filter with terms skips ARP");
        assert!(Filter::parse("").unwrap().matches(None));
        assert!(Filter::parse("host 198.19.0.9 port 999")
            .unwrap()
            .matches(Some(&k)));

        assert_eq!(Filter::parse("src"), Err(FilterError::MissingValue("src")));
        assert!(matches!(
            Filter::parse("dst 300.1.1.1"),
            Err(FilterError::BadValue { what: "dst", .. })
        ));
        assert!(matches!(
            Filter::parse("port 70000"),
            Err(FilterError::BadValue { what: "port", .. })
        ));
        assert_eq!(
            Filter::parse("udp bogus"),
            Err(FilterError::UnknownWord("bogus".into()))
        );
        // A bare number is not a protocol word.
        assert!(matches!(
            Filter::parse("17"),
            Err(FilterError::UnknownWord(_))
        ));
        assert_eq!(Filter::parse("proto 17"), Filter::parse("udp"));
    }

    #[test]
    fn garbage_frames_describe_without_panicking() {
        for n in 0..80 {
            let frame: Vec<u8> = (0..n).map(|i| (i * 37 + 8) as u8).collect();
            let _ = describe_frame(&frame);
            let _ = peek_flow(&frame, true);
        }
    }
}
