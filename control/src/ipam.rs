//! Pod address management: which pod address each attachment holds.
//!
//! [`Ipam`] hands out IPv4 addresses from the node's pod blocks. A node starts with one block
//! (its pod CIDR); a cluster-wide allocator may add more at run time ([`Ipam::add_block`]) and
//! take back empty ones ([`Ipam::remove_block`]).
//!
//! * The network and broadcast address of every block, and every address of the reserved set,
//!   are never handed out, whatever the prefix length of the block.
//! * Allocation is round-robin: the search for a free address starts after the last address
//!   handed out ([`Ipam::last_allocated`]), so an address just released is reused only when every
//!   other one is taken. Flows, conntrack entries and ARP caches that still name it get time to
//!   die before a new pod answers on it.
//! * Everything is in memory. The daemon persists each attachment (and the cursor) through
//!   [`crate::store`], and rebuilds an `Ipam` at start with [`Ipam::restore`] and
//!   [`Ipam::set_last_allocated`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use sluice_dataplane::table::Prefix;

use crate::api::AttachmentKey;

/// Why an address could not be allocated or restored, or a block not added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no pod address block is configured: expected at least one block before allocating")]
    NoBlocks,
    #[error("no free pod address in {}", BlockList(.blocks))]
    Exhausted { blocks: Vec<Prefix> },
    #[error(
        "container {} interface {} already holds {ip}: expected DEL before another ADD",
        .key.container_id, .key.ifname
    )]
    AlreadyAllocated { key: AttachmentKey, ip: Ipv4Addr },
    #[error(
        "{ip} is already held by container {} interface {}: expected each address held once",
        .holder.container_id, .holder.ifname
    )]
    InUse { ip: Ipv4Addr, holder: AttachmentKey },
    #[error("{ip} is outside the pod blocks {}: expected an address inside one", BlockList(.blocks))]
    OutsideBlocks { ip: Ipv4Addr, blocks: Vec<Prefix> },
    #[error("{ip} is the {what} address of block {block}: expected a host address")]
    NotHost {
        ip: Ipv4Addr,
        block: Prefix,
        what: &'static str,
    },
    #[error("{ip} is in the reserved set: expected an unreserved pod address")]
    Reserved { ip: Ipv4Addr },
    #[error("block {block} overlaps pod block {existing}: expected disjoint blocks")]
    Overlap { block: Prefix, existing: Prefix },
    #[error("block {block} has no host address: expected a prefix length of 30 or less")]
    BlockTooSmall { block: Prefix },
    #[error("block {block} is not one of the pod blocks {}", BlockList(.blocks))]
    UnknownBlock { block: Prefix, blocks: Vec<Prefix> },
    #[error(
        "block {block} still holds {in_use} allocated address(es): expected none before removal"
    )]
    BlockInUse { block: Prefix, in_use: usize },
}

/// Formats blocks as `198.19.1.0/26, 198.19.7.64/26`, or `(none)`.
struct BlockList<'a>(&'a [Prefix]);

impl fmt::Display for BlockList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, block) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{block}")?;
        }
        Ok(())
    }
}

/// The pod addresses of one node. See the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    /// Sorted by address and pairwise disjoint, each /30 or larger.
    blocks: Vec<Prefix>,
    reserved: BTreeSet<Ipv4Addr>,
    by_key: BTreeMap<AttachmentKey, Ipv4Addr>,
    by_ip: BTreeMap<Ipv4Addr, AttachmentKey>,
    /// Round-robin cursor: the search starts after it.
    last: Option<Ipv4Addr>,
    /// Host addresses of all blocks that are not reserved.
    capacity: u64,
}

impl Ipam {
    /// An allocator over `blocks` that never hands out an address of `reserved`. Reserved
    /// addresses outside the blocks are kept: they apply to blocks added later.
    pub fn new(
        blocks: impl IntoIterator<Item = Prefix>,
        reserved: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Result<Ipam, IpamError> {
        let mut ipam = Ipam {
            reserved: reserved.into_iter().collect(),
            ..Ipam::default()
        };
        for block in blocks {
            ipam.add_block(block)?;
        }
        Ok(ipam)
    }

    /// Adds a block to allocate from. Refuses blocks without host addresses (/31, /32) and
    /// blocks that overlap one already held.
    pub fn add_block(&mut self, block: Prefix) -> Result<(), IpamError> {
        if block.size() < 4 {
            return Err(IpamError::BlockTooSmall { block });
        }
        if let Some(existing) = self
            .blocks
            .iter()
            .find(|b| b.contains_prefix(&block) || block.contains_prefix(b))
        {
            return Err(IpamError::Overlap {
                block,
                existing: *existing,
            });
        }
        let at = self
            .blocks
            .partition_point(|b| b.addr_u32() < block.addr_u32());
        self.blocks.insert(at, block);
        self.capacity += self.usable(block);
        Ok(())
    }

    /// Removes a block. Refuses while any address of it is allocated: those pods would keep
    /// addresses that another node may be handed next.
    pub fn remove_block(&mut self, block: Prefix) -> Result<(), IpamError> {
        let Some(at) = self.blocks.iter().position(|b| *b == block) else {
            return Err(IpamError::UnknownBlock {
                block,
                blocks: self.blocks.clone(),
            });
        };
        let (first, last) = bounds(block);
        let in_use = self
            .by_ip
            .range(Ipv4Addr::from(first)..=Ipv4Addr::from(last))
            .count();
        if in_use > 0 {
            return Err(IpamError::BlockInUse { block, in_use });
        }
        self.blocks.remove(at);
        self.capacity -= self.usable(block);
        Ok(())
    }

    /// The blocks addresses come from, sorted by address.
    pub fn blocks(&self) -> &[Prefix] {
        &self.blocks
    }

    /// Hands `key` the next free address after the last one handed out.
    pub fn allocate(&mut self, key: &AttachmentKey) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.by_key.get(key) {
            return Err(IpamError::AlreadyAllocated {
                key: key.clone(),
                ip: *ip,
            });
        }
        let Some(first_block) = self.blocks.first() else {
            return Err(IpamError::NoBlocks);
        };
        if self.free_count() == 0 {
            return Err(self.exhausted());
        }
        let mut cursor = self.last.map_or(first_block.addr_u32(), u32::from);
        // Each host visited before a free one is allocated or reserved, and all are distinct
        // until the walk wraps, so this bound is never reached while a free address exists.
        let bound = self.by_ip.len() + self.reserved.len() + 1;
        for _ in 0..bound {
            cursor = self.next_host(cursor);
            let ip = Ipv4Addr::from(cursor);
            if !self.reserved.contains(&ip) && !self.by_ip.contains_key(&ip) {
                self.by_key.insert(key.clone(), ip);
                self.by_ip.insert(ip, key.clone());
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(self.exhausted())
    }

    /// Frees the address `key` holds and returns it; `None` when it holds none (releasing twice
    /// is not an error: CNI DEL is idempotent).
    pub fn release(&mut self, key: &AttachmentKey) -> Option<Ipv4Addr> {
        let ip = self.by_key.remove(key)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    /// The address `key` holds.
    pub fn get(&self, key: &AttachmentKey) -> Option<Ipv4Addr> {
        self.by_key.get(key).copied()
    }

    /// Who holds `ip`.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&AttachmentKey> {
        self.by_ip.get(&ip)
    }

    /// Every allocation, by address.
    pub fn iter(&self) -> impl Iterator<Item = (&AttachmentKey, Ipv4Addr)> + '_ {
        self.by_ip.iter().map(|(ip, key)| (key, *ip))
    }

    /// Records that `key` holds `ip`, as persisted before a restart. Restoring the same record
    /// twice is accepted; an address outside the blocks, a network, broadcast or reserved
    /// address, an address held by another key, or a second address for one key is refused.
    /// Does not move the round-robin cursor (see [`Ipam::set_last_allocated`]).
    pub fn restore(&mut self, key: &AttachmentKey, ip: Ipv4Addr) -> Result<(), IpamError> {
        match self.by_key.get(key) {
            Some(held) if *held == ip => return Ok(()),
            Some(held) => {
                return Err(IpamError::AlreadyAllocated {
                    key: key.clone(),
                    ip: *held,
                })
            }
            None => {}
        }
        if let Some(holder) = self.by_ip.get(&ip) {
            return Err(IpamError::InUse {
                ip,
                holder: holder.clone(),
            });
        }
        let Some(block) = self.block_of(u32::from(ip)) else {
            return Err(IpamError::OutsideBlocks {
                ip,
                blocks: self.blocks.clone(),
            });
        };
        let (network, broadcast) = bounds(block);
        let what = match u32::from(ip) {
            a if a == network => Some("network"),
            a if a == broadcast => Some("broadcast"),
            _ => None,
        };
        if let Some(what) = what {
            return Err(IpamError::NotHost { ip, block, what });
        }
        if self.reserved.contains(&ip) {
            return Err(IpamError::Reserved { ip });
        }
        self.by_key.insert(key.clone(), ip);
        self.by_ip.insert(ip, key.clone());
        Ok(())
    }

    /// The last address handed out: persist it so that a restarted daemon goes on after it.
    pub fn last_allocated(&self) -> Option<Ipv4Addr> {
        self.last
    }

    /// Sets the round-robin cursor, e.g. to the persisted [`Ipam::last_allocated`] at start.
    /// Any address is accepted; one outside the blocks makes the search start at the next block.
    pub fn set_last_allocated(&mut self, ip: Option<Ipv4Addr>) {
        self.last = ip;
    }

    /// Addresses that can still be handed out.
    pub fn free_count(&self) -> u64 {
        // Every allocation is a usable address of a block (`restore` and `allocate` see to it,
        // `remove_block` keeps it so), hence no underflow.
        self.capacity - self.by_ip.len() as u64
    }

    /// Addresses handed out.
    pub fn in_use(&self) -> usize {
        self.by_ip.len()
    }

    /// Addresses of all blocks that may be handed out: hosts that are not reserved.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn exhausted(&self) -> IpamError {
        IpamError::Exhausted {
            blocks: self.blocks.clone(),
        }
    }

    /// Host addresses of `block` that are not reserved.
    fn usable(&self, block: Prefix) -> u64 {
        let (network, broadcast) = bounds(block);
        let reserved = self
            .reserved
            .range(Ipv4Addr::from(network + 1)..=Ipv4Addr::from(broadcast - 1))
            .count() as u64;
        block.size() - 2 - reserved
    }

    fn block_of(&self, addr: u32) -> Option<Prefix> {
        let after = self.blocks.partition_point(|b| b.addr_u32() <= addr);
        let block = *self.blocks.get(after.checked_sub(1)?)?;
        block.contains(Ipv4Addr::from(addr)).then_some(block)
    }

    /// The host address after `addr` in address order over all blocks, wrapping from the last
    /// block to the first. Needs at least one block.
    fn next_host(&self, addr: u32) -> u32 {
        if let Some(block) = self.block_of(addr) {
            let (_, broadcast) = bounds(block);
            if addr < broadcast - 1 {
                return addr + 1;
            }
        }
        let after = self.blocks.partition_point(|b| b.addr_u32() <= addr);
        let next = self.blocks.get(after).or(self.blocks.first());
        next.map_or(addr, |b| b.addr_u32() + 1)
    }
}

/// The network and broadcast address of `block`, as integers.
fn bounds(block: Prefix) -> (u32, u32) {
    let network = block.addr_u32();
    // `size() - 1` fits in u32 for every prefix length, and the block does not wrap.
    (network, network + (block.size() - 1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: usize) -> AttachmentKey {
        AttachmentKey {
            container_id: format!("c{n}"),
            ifname: "eth0".into(),
        }
    }

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn no_reserved() -> [Ipv4Addr; 0] {
        []
    }

    #[test]
    fn slash_30_has_two_addresses() {
        let mut ipam = Ipam::new([p("198.19.0.0/30")], no_reserved()).unwrap();
        assert_eq!((ipam.capacity(), ipam.free_count()), (2, 2));
        assert_eq!(ipam.allocate(&key(0)).unwrap(), ip("198.19.0.1"));
        assert_eq!(ipam.allocate(&key(1)).unwrap(), ip("198.19.0.2"));
        let err = ipam.allocate(&key(2)).unwrap_err();
        assert_eq!(
            err,
            IpamError::Exhausted {
                blocks: vec![p("198.19.0.0/30")]
            }
        );
        assert_eq!(err.to_string(), "no free pod address in 198.19.0.0/30");
        assert_eq!((ipam.free_count(), ipam.in_use()), (0, 2));
    }

    #[test]
    fn slash_29_has_six_addresses_less_reserved() {
        let mut ipam = Ipam::new([p("198.19.0.8/29")], no_reserved()).unwrap();
        let got: Vec<_> = (0..6).map(|n| ipam.allocate(&key(n)).unwrap()).collect();
        let want: Vec<_> = (9..=14).map(|h| Ipv4Addr::new(198, 19, 0, h)).collect();
        assert_eq!(got, want);
        assert!(matches!(
            ipam.allocate(&key(6)),
            Err(IpamError::Exhausted { .. })
        ));

        let mut ipam = Ipam::new([p("198.19.0.8/29")], [ip("198.19.0.11")]).unwrap();
        assert_eq!(ipam.capacity(), 5);
        let got: Vec<_> = (0..5).map(|n| ipam.allocate(&key(n)).unwrap()).collect();
        assert!(!got.contains(&ip("198.19.0.11")));
        assert!(matches!(
            ipam.allocate(&key(5)),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let mut ipam = Ipam::new([p("198.19.0.0/29")], no_reserved()).unwrap();
        assert_eq!(ipam.allocate(&key(0)).unwrap(), ip("198.19.0.1"));
        assert_eq!(ipam.allocate(&key(1)).unwrap(), ip("198.19.0.2"));
        assert_eq!(ipam.release(&key(0)), Some(ip("198.19.0.1")));
        assert_eq!(ipam.allocate(&key(2)).unwrap(), ip("198.19.0.3"));
        assert_eq!(ipam.last_allocated(), Some(ip("198.19.0.3")));
        // The walk wraps once the end of the block is reached.
        for n in 3..6 {
            ipam.allocate(&key(n)).unwrap();
        }
        assert_eq!(ipam.allocate(&key(6)).unwrap(), ip("198.19.0.1"));
    }

    #[test]
    fn cursor_survives_a_restart() {
        let mut ipam = Ipam::new([p("198.19.0.0/28")], no_reserved()).unwrap();
        for n in 0..4 {
            ipam.allocate(&key(n)).unwrap();
        }
        ipam.release(&key(3));
        let mut restarted = Ipam::new([p("198.19.0.0/28")], no_reserved()).unwrap();
        for (k, a) in ipam.iter() {
            restarted.restore(k, a).unwrap();
        }
        restarted.set_last_allocated(ipam.last_allocated());
        assert_eq!(restarted.allocate(&key(9)).unwrap(), ip("198.19.0.5"));
    }

    #[test]
    fn a_key_holds_one_address() {
        let mut ipam = Ipam::new([p("198.19.0.0/29")], no_reserved()).unwrap();
        let a = ipam.allocate(&key(0)).unwrap();
        let err = ipam.allocate(&key(0)).unwrap_err();
        assert_eq!(err, IpamError::AlreadyAllocated { key: key(0), ip: a });
        assert!(err.to_string().contains("container c0 interface eth0"));
        assert_eq!(ipam.get(&key(0)), Some(a));
        assert_eq!(ipam.holder(a), Some(&key(0)));
        assert_eq!(ipam.release(&key(0)), Some(a));
        assert_eq!(ipam.release(&key(0)), None);
        assert_eq!(ipam.get(&key(0)), None);
        assert_eq!(ipam.in_use(), 0);
    }

    #[test]
    fn without_blocks_nothing_is_allocated() {
        let mut ipam = Ipam::new([], no_reserved()).unwrap();
        assert_eq!(ipam.allocate(&key(0)), Err(IpamError::NoBlocks));
        assert_eq!(ipam.free_count(), 0);
    }

    #[test]
    fn blocks_are_added_and_removed() {
        let mut ipam = Ipam::new([p("198.19.0.0/30")], no_reserved()).unwrap();
        ipam.allocate(&key(0)).unwrap();
        ipam.allocate(&key(1)).unwrap();
        ipam.add_block(p("198.19.1.64/26")).unwrap();
        assert_eq!(ipam.capacity(), 2 + 62);
        assert_eq!(ipam.allocate(&key(2)).unwrap(), ip("198.19.1.65"));

        assert_eq!(
            ipam.add_block(p("198.19.1.0/24")),
            Err(IpamError::Overlap {
                block: p("198.19.1.0/24"),
                existing: p("198.19.1.64/26")
            })
        );
        assert_eq!(
            ipam.add_block(p("198.19.1.64/27")),
            Err(IpamError::Overlap {
                block: p("198.19.1.64/27"),
                existing: p("198.19.1.64/26")
            })
        );
        assert_eq!(
            ipam.add_block(p("198.19.2.0/31")),
            Err(IpamError::BlockTooSmall {
                block: p("198.19.2.0/31")
            })
        );

        let err = ipam.remove_block(p("198.19.1.64/26")).unwrap_err();
        assert_eq!(
            err,
            IpamError::BlockInUse {
                block: p("198.19.1.64/26"),
                in_use: 1
            }
        );
        assert!(err.to_string().contains("198.19.1.64/26"));
        assert!(matches!(
            ipam.remove_block(p("198.19.9.0/26")),
            Err(IpamError::UnknownBlock { .. })
        ));
        ipam.release(&key(2));
        ipam.remove_block(p("198.19.1.64/26")).unwrap();
        assert_eq!(ipam.blocks(), &[p("198.19.0.0/30")]);
        assert_eq!((ipam.capacity(), ipam.free_count()), (2, 0));
        // The cursor points into the removed block: the walk starts at the next one.
        ipam.release(&key(0));
        assert_eq!(ipam.allocate(&key(3)).unwrap(), ip("198.19.0.1"));
    }

    #[test]
    fn allocation_walks_blocks_in_address_order() {
        let mut ipam = Ipam::new([p("198.19.5.0/30"), p("198.19.1.0/30")], no_reserved()).unwrap();
        assert_eq!(ipam.blocks(), &[p("198.19.1.0/30"), p("198.19.5.0/30")]);
        let got: Vec<_> = (0..4).map(|n| ipam.allocate(&key(n)).unwrap()).collect();
        assert_eq!(
            got,
            ["198.19.1.1", "198.19.1.2", "198.19.5.1", "198.19.5.2"].map(ip)
        );
        let err = ipam.allocate(&key(4)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free pod address in 198.19.1.0/30, 198.19.5.0/30"
        );
    }

    #[test]
    fn restore_refuses_what_allocate_never_hands_out() {
        let mut ipam = Ipam::new([p("198.19.0.0/29")], [ip("198.19.0.4")]).unwrap();
        ipam.restore(&key(0), ip("198.19.0.2")).unwrap();
        ipam.restore(&key(0), ip("198.19.0.2")).unwrap();
        assert_eq!(
            ipam.restore(&key(0), ip("198.19.0.3")),
            Err(IpamError::AlreadyAllocated {
                key: key(0),
                ip: ip("198.19.0.2")
            })
        );
        assert_eq!(
            ipam.restore(&key(1), ip("198.19.0.2")),
            Err(IpamError::InUse {
                ip: ip("198.19.0.2"),
                holder: key(0)
            })
        );
        let err = ipam.restore(&key(1), ip("198.18.0.2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "198.18.0.2 is outside the pod blocks 198.19.0.0/29: expected an address inside one"
        );
        assert_eq!(
            ipam.restore(&key(1), ip("198.19.0.0")),
            Err(IpamError::NotHost {
                ip: ip("198.19.0.0"),
                block: p("198.19.0.0/29"),
                what: "network"
            })
        );
        assert_eq!(
            ipam.restore(&key(1), ip("198.19.0.7")),
            Err(IpamError::NotHost {
                ip: ip("198.19.0.7"),
                block: p("198.19.0.0/29"),
                what: "broadcast"
            })
        );
        assert_eq!(
            ipam.restore(&key(1), ip("198.19.0.4")),
            Err(IpamError::Reserved {
                ip: ip("198.19.0.4")
            })
        );
        assert_eq!((ipam.in_use(), ipam.free_count()), (1, 4));
        // A restored address is skipped by allocation.
        let got: Vec<_> = (1..5).map(|n| ipam.allocate(&key(n)).unwrap()).collect();
        assert_eq!(
            got,
            ["198.19.0.1", "198.19.0.3", "198.19.0.5", "198.19.0.6"].map(ip)
        );
    }

    #[test]
    fn large_blocks_do_not_overflow() {
        let mut ipam = Ipam::new([p("0.0.0.0/0")], no_reserved()).unwrap();
        assert_eq!(ipam.capacity(), (1u64 << 32) - 2);
        ipam.set_last_allocated(Some(ip("255.255.255.254")));
        assert_eq!(ipam.allocate(&key(0)).unwrap(), ip("0.0.0.1"));
        assert!(ipam.restore(&key(1), ip("255.255.255.255")).is_err());
    }

    // A model of the allocator: the usable addresses listed in order, and "first free address
    // after the cursor, else the first free one".

    const BLOCKS: [&str; 3] = ["198.19.0.0/29", "198.19.0.8/30", "198.19.1.0/28"];
    // .7 is also the broadcast of the /29; .12 is outside every block.
    const RESERVED: [&str; 4] = ["198.19.0.2", "198.19.0.7", "198.19.1.5", "198.19.0.12"];
    const KEYS: usize = 14;

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(usize),
        Release(usize),
        AddBlock(usize),
        RemoveBlock(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..KEYS).prop_map(Op::Allocate),
            4 => (0..KEYS).prop_map(Op::Release),
            1 => (0..BLOCKS.len()).prop_map(Op::AddBlock),
            1 => (0..BLOCKS.len()).prop_map(Op::RemoveBlock),
            1 => Just(Op::Restart),
        ]
    }

    #[derive(Default)]
    struct Model {
        blocks: BTreeSet<Prefix>,
        held: BTreeMap<usize, Ipv4Addr>,
        last: Option<Ipv4Addr>,
    }

    impl Model {
        fn usable(&self) -> Vec<Ipv4Addr> {
            let reserved: Vec<Ipv4Addr> = RESERVED.iter().map(|r| ip(r)).collect();
            self.blocks
                .iter()
                .flat_map(|b| (1..b.size() - 1).map(move |o| b.nth(o)))
                .filter(|a| !reserved.contains(a))
                .collect()
        }

        fn next(&self) -> Option<Ipv4Addr> {
            let free: Vec<Ipv4Addr> = self
                .usable()
                .into_iter()
                .filter(|a| !self.held.values().any(|h| h == a))
                .collect();
            let after = self.last.and_then(|l| free.iter().find(|a| **a > l));
            after.or(free.first()).copied()
        }
    }

    fn check(ipam: &Ipam, model: &Model) -> Result<(), TestCaseError> {
        let usable = model.usable();
        let reserved: Vec<Ipv4Addr> = RESERVED.iter().map(|r| ip(r)).collect();
        prop_assert_eq!(ipam.capacity(), usable.len() as u64);
        prop_assert_eq!(ipam.in_use(), model.held.len());
        prop_assert_eq!(ipam.free_count() + ipam.in_use() as u64, ipam.capacity());
        let mut seen = BTreeSet::new();
        for (k, a) in ipam.iter() {
            prop_assert!(seen.insert(a), "{} handed out twice", a);
            prop_assert!(!reserved.contains(&a), "reserved {} handed out", a);
            let block = ipam.blocks().iter().find(|b| b.contains(a));
            prop_assert!(block.is_some(), "{} outside the blocks", a);
            let (network, broadcast) = bounds(*block.unwrap());
            prop_assert!(u32::from(a) != network && u32::from(a) != broadcast);
            prop_assert_eq!(ipam.get(k), Some(a));
            prop_assert_eq!(ipam.holder(a), Some(k));
        }
        for (n, a) in &model.held {
            prop_assert_eq!(ipam.get(&key(*n)), Some(*a));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn allocator_matches_its_model(
            initial in proptest::collection::btree_set(0..BLOCKS.len(), 0..=BLOCKS.len()),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let reserved = RESERVED.map(ip);
            let mut model = Model {
                blocks: initial.iter().map(|i| p(BLOCKS[*i])).collect(),
                ..Model::default()
            };
            let mut ipam = Ipam::new(model.blocks.iter().copied(), reserved).unwrap();
            for op in ops {
                match op {
                    Op::Allocate(n) => {
                        let got = ipam.allocate(&key(n));
                        if let Some(a) = model.held.get(&n) {
                            prop_assert_eq!(got, Err(IpamError::AlreadyAllocated { key: key(n), ip: *a }));
                        } else if model.blocks.is_empty() {
                            prop_assert_eq!(got, Err(IpamError::NoBlocks));
                        } else if let Some(want) = model.next() {
                            prop_assert_eq!(got, Ok(want));
                            model.held.insert(n, want);
                            model.last = Some(want);
                        } else {
                            let blocks = model.blocks.iter().copied().collect();
                            prop_assert_eq!(got, Err(IpamError::Exhausted { blocks }));
                        }
                    }
                    Op::Release(n) => {
                        prop_assert_eq!(ipam.release(&key(n)), model.held.remove(&n));
                    }
                    Op::AddBlock(i) => {
                        let block = p(BLOCKS[i]);
                        let got = ipam.add_block(block);
                        prop_assert_eq!(got.is_ok(), model.blocks.insert(block));
                    }
                    Op::RemoveBlock(i) => {
                        let block = p(BLOCKS[i]);
                        let in_use = model.held.values().filter(|a| block.contains(**a)).count();
                        let got = ipam.remove_block(block);
                        if !model.blocks.contains(&block) {
                            prop_assert!(matches!(got, Err(IpamError::UnknownBlock { .. })), "{:?}", got);
                        } else if in_use > 0 {
                            prop_assert_eq!(got, Err(IpamError::BlockInUse { block, in_use }));
                        } else {
                            prop_assert_eq!(got, Ok(()));
                            model.blocks.remove(&block);
                        }
                    }
                    Op::Restart => {
                        let mut fresh = Ipam::new(ipam.blocks().iter().copied(), reserved).unwrap();
                        for (k, a) in ipam.iter() {
                            prop_assert_eq!(fresh.restore(k, a), Ok(()));
                        }
                        fresh.set_last_allocated(ipam.last_allocated());
                        ipam = fresh;
                    }
                }
                check(&ipam, &model)?;
            }
        }
    }
}
