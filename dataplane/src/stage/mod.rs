//! The stages of the pipeline (VPP's node graph). Each stage is a function over
//! a whole batch that handles the packets whose `meta.next` names it and writes
//! each one's next decision; the [`crate::pipeline::Pipeline`] runs the stages in
//! their fixed topological order and then dispatches once.
//!
//! ```text
//! pod/host port ─ eth-input ─┬─ arp ──────────────────────────────────────┐
//!                            └─ ipv4-input ─ policy(egress) ─ ipv4-lookup ┼─ vxlan-encap ─┐
//! uplink ─ uplink-input ─────── ipv4-input ──────────────────┘            ├─ ipip-encap ──┤
//!  (vxlan-decap | ipip-decap | native-input)      policy(ingress) ─ local ├─ native-out ──┼─ tx
//!                                                                          └─ host-out ────┤
//!                            ttl expiry / frag needed ─ icmp-error ────────────────────────┘
//! ```
//!
//! The fast path: an untraced batch runs fused input stages
//! ([`input::eth_input_fused`]: ethernet-input + ipv4-input;
//! [`input::uplink_input_fused`]: uplink-input + ipv4-input + ipv4-lookup +
//! the output stage) that make the same decisions as the stages in turn, in
//! one pass and one parse; the stages after them see only what is left. A
//! traced batch runs every stage on its own, so a trace shows each decision.
//! Headers are read through fixed-size arrays ([`crate::buf::Buf::head`]) so
//! offsets are constants and bounds checks fold away.

pub mod encap;
pub mod icmp_error;
pub mod input;
pub mod lookup;

use crate::buf::Packet;
use crate::drop::DropReason;

/// Stage numbers, in the order the pipeline runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Next {
    Drop = 0,
    UplinkInput,
    EthInput,
    Arp,
    Ipv4Input,
    PolicyEgress,
    Lookup,
    PolicyIngress,
    LocalDelivery,
    HostOutput,
    NativeOutput,
    VxlanEncap,
    IpipEncap,
    IcmpError,
    Tx,
}

impl Next {
    #[inline(always)]
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The stage with this number (`meta.next`), if there is one.
    pub fn from_u8(n: u8) -> Option<Next> {
        const ALL: [Next; 15] = [
            Next::Drop,
            Next::UplinkInput,
            Next::EthInput,
            Next::Arp,
            Next::Ipv4Input,
            Next::PolicyEgress,
            Next::Lookup,
            Next::PolicyIngress,
            Next::LocalDelivery,
            Next::HostOutput,
            Next::NativeOutput,
            Next::VxlanEncap,
            Next::IpipEncap,
            Next::IcmpError,
            Next::Tx,
        ];
        ALL.get(usize::from(n)).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Next::Drop => "drop",
            Next::UplinkInput => "uplink-input",
            Next::EthInput => "ethernet-input",
            Next::Arp => "arp",
            Next::Ipv4Input => "ipv4-input",
            Next::PolicyEgress => "policy-egress",
            Next::Lookup => "ipv4-lookup",
            Next::PolicyIngress => "policy-ingress",
            Next::LocalDelivery => "local-delivery",
            Next::HostOutput => "host-output",
            Next::NativeOutput => "native-output",
            Next::VxlanEncap => "vxlan-encap",
            Next::IpipEncap => "ipip-encap",
            Next::IcmpError => "icmp-error",
            Next::Tx => "tx",
        }
    }
}

/// What kind of ICMP error the icmp-error stage builds (in `meta.aux`).
pub mod icmp_kind {
    pub const TIME_EXCEEDED: u32 = 1 << 16;
    /// Frag needed; the low 16 bits carry the next-hop MTU.
    pub const FRAG_NEEDED: u32 = 2 << 16;
}

/// Per-worker counters. Plain integers: one worker owns them; the runtime
/// publishes snapshots for scraping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    pub drops: [u64; DropReason::COUNT],
    pub rx_packets: u64,
    pub batches: u64,
    pub arp_replies: u64,
    pub icmp_errors: u64,
    pub vxlan_decap: u64,
    pub ipip_decap: u64,
    pub native_in: u64,
    pub vxlan_encap: u64,
    pub ipip_encap: u64,
    pub native_out: u64,
    pub local_delivered: u64,
    pub to_host: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            drops: [0; DropReason::COUNT],
            rx_packets: 0,
            batches: 0,
            arp_replies: 0,
            icmp_errors: 0,
            vxlan_decap: 0,
            ipip_decap: 0,
            native_in: 0,
            vxlan_encap: 0,
            ipip_encap: 0,
            native_out: 0,
            local_delivered: 0,
            to_host: 0,
        }
    }
}

impl Counters {
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn drop_count(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Adds another worker's counters (for totals).
    pub fn add(&mut self, o: &Counters) {
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.rx_packets += o.rx_packets;
        self.batches += o.batches;
        self.arp_replies += o.arp_replies;
        self.icmp_errors += o.icmp_errors;
        self.vxlan_decap += o.vxlan_decap;
        self.ipip_decap += o.ipip_decap;
        self.native_in += o.native_in;
        self.vxlan_encap += o.vxlan_encap;
        self.ipip_encap += o.ipip_encap;
        self.native_out += o.native_out;
        self.local_delivered += o.local_delivered;
        self.to_host += o.to_host;
    }

    /// Named non-drop counters, for display.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("rx_packets", self.rx_packets),
            ("batches", self.batches),
            ("arp_replies", self.arp_replies),
            ("icmp_errors", self.icmp_errors),
            ("vxlan_decap", self.vxlan_decap),
            ("ipip_decap", self.ipip_decap),
            ("native_in", self.native_in),
            ("vxlan_encap", self.vxlan_encap),
            ("ipip_encap", self.ipip_encap),
            ("native_out", self.native_out),
            ("local_delivered", self.local_delivered),
            ("to_host", self.to_host),
        ]
    }
}

/// Marks a packet for dropping.
#[inline(always)]
pub(crate) fn drop(p: &mut Packet, r: DropReason) -> u32 {
    p.meta.next = Next::Drop as u8;
    p.meta.drop = r;
    Next::Drop.bit()
}

/// Sends a packet to a stage; returns the stage's bit for the pending mask.
#[inline(always)]
pub(crate) fn goto(p: &mut Packet, n: Next) -> u32 {
    p.meta.next = n as u8;
    n.bit()
}

/// Whether the packet waits for stage `n`.
#[inline(always)]
pub(crate) fn at(p: &Packet, n: Next) -> bool {
    p.meta.next == n as u8
}
