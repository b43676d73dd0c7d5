//! The policy hook: where NetworkPolicy plugs into the pipeline.
//!
//! The pipeline is generic over [`Policy`], so the hook costs a direct, inlined
//! call per packet (nothing at all for [`AllowAll`]), never a virtual call.
//! Egress is asked for packets leaving a local pod, ingress for packets about to
//! reach one; a packet between two pods on this node is asked both.

use crate::buf::Packet;
use crate::drop::DropReason;
use crate::table::Tables;

/// A policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Drop, counted under the given reason (e.g. denied, or conntrack full).
    Deny(DropReason),
}

/// NetworkPolicy enforcement, per worker (it may keep per-worker state such as
/// a connection table). `now` is monotonic nanoseconds from the caller.
pub trait Policy {
    /// A packet leaving the local endpoint `pkt.meta.src_ep`; `pkt.meta.flow` is set.
    fn egress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict;
    /// A packet about to reach the local endpoint `pkt.meta.dst_ep`.
    fn ingress(&mut self, tables: &Tables, pkt: &Packet, now: u64) -> Verdict;
}

/// No isolation: every flow is allowed (pods selected by no policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    #[inline(always)]
    fn egress(&mut self, _: &Tables, _: &Packet, _: u64) -> Verdict {
        Verdict::Allow
    }

    #[inline(always)]
    fn ingress(&mut self, _: &Tables, _: &Packet, _: u64) -> Verdict {
        Verdict::Allow
    }
}
