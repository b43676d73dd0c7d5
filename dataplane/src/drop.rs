//! Why a packet was dropped. Every drop in the fast path names one of these and
//! bumps its per-worker counter: there are no silent drops.

macro_rules! drop_reasons {
    ($( $(#[$m:meta])* $name:ident = $n:literal, $slug:literal, $desc:literal; )*) => {
        /// A named reason for dropping a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[repr(u8)]
        pub enum DropReason {
            /// Not dropped (the default in fresh metadata).
            #[default]
            None = 0,
            $( $(#[$m])* $name = $n, )*
        }

        impl DropReason {
            /// Every reason, in counter order (index = `as usize`).
            pub const ALL: &'static [DropReason] = &[DropReason::None, $(DropReason::$name,)*];

            /// Short machine-friendly name (metrics labels, `sluicectl stats`).
            pub fn name(self) -> &'static str {
                match self {
                    DropReason::None => "none",
                    $( DropReason::$name => $slug, )*
                }
            }

            /// One line for operators.
            pub fn description(self) -> &'static str {
                match self {
                    DropReason::None => "not dropped",
                    $( DropReason::$name => $desc, )*
                }
            }

            /// The reason with this number, if any.
            pub fn from_u8(n: u8) -> Option<DropReason> {
                Self::ALL.get(usize::from(n)).copied()
            }
        }
    };
}

drop_reasons! {
    EthTruncated = 1, "eth_truncated", "frame shorter than an Ethernet header";
    UnsupportedEthertype = 2, "unsupported_ethertype", "ethertype other than IPv4 or ARP";
    ArpMalformed = 3, "arp_malformed", "ARP packet that is not Ethernet/IPv4 or is truncated";
    ArpNotRequest = 4, "arp_not_request", "ARP that needs no answer (a reply, or a probe for the sender's own address)";
    ArpOnUplink = 5, "arp_on_uplink", "ARP received on the uplink (the node's kernel answers it)";
    Ipv4Truncated = 6, "ipv4_truncated", "IPv4 header or total length longer than the frame";
    Ipv4BadVersion = 7, "ipv4_bad_version", "IP version is not 4 or header length below 20";
    Ipv4BadChecksum = 8, "ipv4_bad_checksum", "IPv4 header checksum does not verify";
    TtlExpired = 9, "ttl_expired", "TTL reached zero (ICMP time exceeded sent to local senders)";
    SpoofedSourceIp = 10, "spoofed_source_ip", "pod sent with a source IPv4 that is not its own";
    SpoofedSourceMac = 11, "spoofed_source_mac", "pod sent with a source MAC that is not its own";
    UnknownPort = 12, "unknown_port", "packet from a pod port with no endpoint registered";
    NoRoute = 13, "no_route", "no route to the destination";
    RouteDrop = 14, "route_drop", "route says drop (blackhole)";
    NoEndpoint = 15, "no_endpoint", "destination is in this node's pod CIDR but no pod has it";
    NeighbourUnresolved = 16, "neighbour_unresolved", "next-hop MAC not resolved yet";
    FragNeeded = 17, "frag_needed", "DF packet larger than the path MTU (ICMP sent to local senders)";
    TooBig = 18, "too_big", "packet larger than the path MTU and no ICMP could be sent";
    NoHeadroom = 19, "no_headroom", "buffer has no headroom for the outer headers";
    NotForNode = 20, "not_for_node", "uplink packet not addressed to this node's tunnel or pods";
    UnknownTunnelSource = 21, "unknown_tunnel_source", "tunnel packet from an address that is not a known node";
    VxlanBadFlags = 22, "vxlan_bad_flags", "VXLAN header without the I flag or with reserved bits set";
    VxlanWrongVni = 23, "vxlan_wrong_vni", "VXLAN packet with a VNI this node does not use";
    VxlanTruncated = 24, "vxlan_truncated", "UDP/VXLAN headers or inner frame truncated";
    TunnelModeMismatch = 25, "tunnel_mode_mismatch", "encapsulation this node is not configured for";
    InnerNotIpv4 = 26, "inner_not_ipv4", "decapsulated frame does not carry IPv4";
    PolicyDeniedEgress = 27, "policy_denied_egress", "NetworkPolicy denies the flow leaving its pod";
    PolicyDeniedIngress = 28, "policy_denied_ingress", "NetworkPolicy denies the flow reaching its pod";
    ConntrackFull = 29, "conntrack_full", "connection table full: new flow refused";
    HostPortDisabled = 30, "host_port_disabled", "destination via the host port, which is not attached";
    Hairpin = 31, "hairpin", "packet would leave by the port it came in on";
    TxQueueFull = 32, "tx_queue_full", "output queue full";
    TxError = 33, "tx_error", "port failed to transmit";
    NoBuffer = 34, "no_buffer", "buffer pool exhausted";
    IcmpErrorSuppressed = 35, "icmp_error_suppressed", "no ICMP error for an ICMP error, a fragment or a non-unicast packet";
    TooShortForIcmp = 36, "too_short_for_icmp", "frame too short to quote in an ICMP error";
}

impl DropReason {
    /// How many counters a per-reason array needs.
    pub const COUNT: usize = Self::ALL.len();
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_is_dense_and_round_trips() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
            assert_eq!(DropReason::from_u8(i as u8), Some(*r));
            assert!(!r.description().is_empty());
        }
        assert_eq!(DropReason::from_u8(DropReason::COUNT as u8), None);
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }
}
