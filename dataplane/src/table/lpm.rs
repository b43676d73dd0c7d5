//! Longest-prefix match over IPv4: a 16-8-8 multibit trie (DPDK's DIR-24-8
//! idea with a smaller first level, so a rebuild copies 256 KiB, not 64 MiB).
//!
//! A lookup is one to three dependent loads. Each slot holds a packed 31-bit
//! value (see [`super::route::NextHop::pack`]) or, with the top bit set, the index
//! of a 256-slot child chunk. The trie is immutable: the control plane builds a
//! new one from an [`LpmBuilder`] and swaps it in (see [`super::TableHandle`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

const CHILD: u32 = 1 << 31;
const L0_SIZE: usize = 1 << 16;
const CHUNK: usize = 256;

/// An IPv4 prefix (address bits beyond `len` are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: u32,
    len: u8,
}

/// A prefix that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("prefix length {0} is over 32")]
    Length(u8),
    #[error("invalid prefix {0:?}: expected a.b.c.d/len")]
    Syntax(String),
    #[error("prefix {0} has host bits set (did you mean {1}?)")]
    HostBits(String, String),
}

impl Prefix {
    /// `addr/len`, with host bits cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Prefix, PrefixError> {
        if len > 32 {
            return Err(PrefixError::Length(len));
        }
        Ok(Prefix {
            addr: u32::from(addr) & mask(len),
            len,
        })
    }

    /// `addr/len`, refusing host bits (for configuration and API input).
    pub fn new_strict(addr: Ipv4Addr, len: u8) -> Result<Prefix, PrefixError> {
        let p = Prefix::new(addr, len)?;
        if p.addr != u32::from(addr) {
            return Err(PrefixError::HostBits(
                format!("{addr}/{len}"),
                p.to_string(),
            ));
        }
        Ok(p)
    }

    pub fn host(addr: Ipv4Addr) -> Prefix {
        Prefix {
            addr: u32::from(addr),
            len: 32,
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn addr_u32(&self) -> u32 {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & mask(self.len) == self.addr
    }

    pub fn contains_prefix(&self, other: &Prefix) -> bool {
        other.len >= self.len && other.addr & mask(self.len) == self.addr
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// The address at `offset` from the start (wrapping inside the prefix).
    pub fn nth(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | (offset as u32 & !mask(self.len)))
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = PrefixError;
    /// Parses `a.b.c.d/len` strictly (no host bits); a bare address is a /32.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .map_err(|_| PrefixError::Syntax(s.to_owned()))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| PrefixError::Syntax(s.to_owned()))?;
        Prefix::new_strict(addr, l)
    }
}

/// The immutable trie.
#[derive(Clone)]
pub struct Lpm {
    /// Fixed-size levels: `addr >> 16` and a byte index need no bounds check;
    /// only the chunk number does.
    l0: Box<[u32; L0_SIZE]>,
    chunks: Vec<[u32; CHUNK]>,
}

impl std::fmt::Debug for Lpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lpm")
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Default for Lpm {
    fn default() -> Self {
        LpmBuilder::new().build()
    }
}

impl Lpm {
    /// The value of the longest prefix holding `addr`; 0 when none does.
    #[inline(always)]
    pub fn lookup(&self, addr: u32) -> u32 {
        // Chunk numbers are written only by the builder and always point
        // inside `chunks`; a missing one (never) reads as no route.
        let e = self.l0[(addr >> 16) as usize];
        if e & CHILD == 0 {
            return e;
        }
        let Some(c) = self.chunks.get((e & !CHILD) as usize) else {
            return 0;
        };
        let e = c[((addr >> 8) & 0xff) as usize];
        if e & CHILD == 0 {
            return e;
        }
        match self.chunks.get((e & !CHILD) as usize) {
            Some(c) => c[(addr & 0xff) as usize],
            None => 0,
        }
    }

    /// Bytes of memory the trie holds.
    pub fn memory(&self) -> usize {
        (L0_SIZE + self.chunks.len() * CHUNK) * 4
    }
}

/// The set of prefixes a trie is built from (the control plane's copy).
#[derive(Debug, Clone, Default)]
pub struct LpmBuilder {
    prefixes: BTreeMap<Prefix, u32>,
}

impl LpmBuilder {
    pub fn new() -> LpmBuilder {
        LpmBuilder::default()
    }

    /// Adds or replaces a prefix. `value` must be non-zero and below 2^31.
    pub fn insert(&mut self, p: Prefix, value: u32) -> Option<u32> {
        assert!(
            value != 0 && value & CHILD == 0,
            "LPM value {value:#x} out of range"
        );
        self.prefixes.insert(p, value)
    }

    pub fn remove(&mut self, p: &Prefix) -> Option<u32> {
        self.prefixes.remove(p)
    }

    pub fn get(&self, p: &Prefix) -> Option<u32> {
        self.prefixes.get(p).copied()
    }

    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &u32)> {
        self.prefixes.iter()
    }

    /// Builds the trie. Prefixes are written shortest first, so a longer prefix
    /// always overwrites the slots of the shorter ones it refines, and a child
    /// chunk is always created after every shorter prefix covering it was written
    /// (it inherits their value).
    pub fn build(&self) -> Lpm {
        let mut l0: Box<[u32; L0_SIZE]> = vec![0u32; L0_SIZE]
            .into_boxed_slice()
            .try_into()
            .expect("a vector of L0_SIZE slots");
        let mut chunks: Vec<[u32; CHUNK]> = Vec::new();
        let mut order: Vec<(&Prefix, &u32)> = self.prefixes.iter().collect();
        order.sort_by_key(|(p, _)| p.len);

        fn child(chunks: &mut Vec<[u32; CHUNK]>, slot: &mut u32) -> usize {
            if *slot & CHILD != 0 {
                return (*slot & !CHILD) as usize;
            }
            let idx = chunks.len();
            chunks.push([*slot; CHUNK]);
            *slot = CHILD | idx as u32;
            idx
        }

        for (p, &v) in order {
            let a = p.addr;
            match p.len {
                0..=16 => {
                    let start = (a >> 16) as usize;
                    let n = 1usize << (16 - p.len);
                    l0[start..start + n].fill(v);
                }
                17..=24 => {
                    let c = child(&mut chunks, &mut l0[(a >> 16) as usize]);
                    let start = ((a >> 8) & 0xff) as usize;
                    let n = 1usize << (24 - p.len);
                    chunks[c][start..start + n].fill(v);
                }
                _ => {
                    let c1 = child(&mut chunks, &mut l0[(a >> 16) as usize]);
                    let mut slot = chunks[c1][((a >> 8) & 0xff) as usize];
                    let c2 = child(&mut chunks, &mut slot);
                    chunks[c1][((a >> 8) & 0xff) as usize] = slot;
                    let start = (a & 0xff) as usize;
                    let n = 1usize << (32 - p.len);
                    chunks[c2][start..start + n].fill(v);
                }
            }
        }
        Lpm { l0, chunks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(prefixes: &[(Prefix, u32)], a: u32) -> u32 {
        let mut best: Option<(u8, u32)> = None;
        for (p, v) in prefixes {
            if p.contains(Ipv4Addr::from(a)) && best.is_none_or(|(l, _)| p.len >= l) {
                best = Some((p.len, *v));
            }
        }
        best.map_or(0, |(_, v)| v)
    }

    fn pfx(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn nested_prefixes() {
        let mut b = LpmBuilder::new();
        b.insert(pfx("0.0.0.0/0"), 1);
        b.insert(pfx("198.19.0.0/16"), 2);
        b.insert(pfx("198.19.1.0/24"), 3);
        b.insert(pfx("198.19.1.64/26"), 4);
        b.insert(pfx("198.19.1.70/32"), 5);
        let t = b.build();
        let l = |s: &str| t.lookup(u32::from(s.parse::<Ipv4Addr>().unwrap()));
        assert_eq!(l("8.8.8.8"), 1);
        assert_eq!(l("198.19.2.1"), 2);
        assert_eq!(l("198.19.1.1"), 3);
        assert_eq!(l("198.19.1.65"), 4);
        assert_eq!(l("198.19.1.70"), 5);
        assert_eq!(l("198.19.1.128"), 3);
        b.remove(&pfx("0.0.0.0/0"));
        assert_eq!(b.build().lookup(u32::from(Ipv4Addr::new(8, 8, 8, 8))), 0);
    }

    #[test]
    fn prefix_text() {
        assert_eq!(pfx("198.19.1.0/24").to_string(), "198.19.1.0/24");
        assert!("198.19.1.1/24".parse::<Prefix>().is_err());
        assert!("198.19.1.0/33".parse::<Prefix>().is_err());
        assert!("198.19.1/24".parse::<Prefix>().is_err());
        assert_eq!(pfx("10.0.0.1").prefix_len(), 32);
    }

    #[test]
    fn holds_100k_prefixes() {
        // 100k prefixes of mixed length (/16../32), checked against a naive scan.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut b = LpmBuilder::new();
        while b.len() < 100_000 {
            let len = 16 + (next() % 17) as u8;
            let p = Prefix::new(
                Ipv4Addr::from(0xc613_0000 | (next() & 0x0003_ffff) << 6),
                len,
            )
            .unwrap();
            let v = 1 + next() % 1000;
            b.insert(p, v);
        }
        let t = b.build();
        let list: Vec<(Prefix, u32)> = b.iter().map(|(p, v)| (*p, *v)).collect();
        for _ in 0..300 {
            let a = 0xc600_0000 | (next() & 0x03ff_ffff);
            assert_eq!(t.lookup(a), naive(&list, a), "{}", Ipv4Addr::from(a));
        }
        for (p, v) in list.iter().step_by(997) {
            // The last address of each prefix resolves to it or a longer one.
            let last = p.addr_u32() | !mask(p.len);
            let got = t.lookup(last);
            assert!(got == *v || got == naive(&list, last), "{p}");
        }
    }

    proptest! {
        #[test]
        fn matches_naive(entries in proptest::collection::vec((any::<u32>(), 0u8..=32, 1u32..100), 0..64),
                         probes in proptest::collection::vec(any::<u32>(), 64)) {
            let mut b = LpmBuilder::new();
            for (a, l, v) in &entries {
                b.insert(Prefix::new(Ipv4Addr::from(*a), *l).unwrap(), *v);
            }
            let list: Vec<(Prefix, u32)> = b.iter().map(|(p, v)| (*p, *v)).collect();
            let t = b.build();
            for a in probes.iter().copied().chain(entries.iter().map(|e| e.0)) {
                prop_assert_eq!(t.lookup(a), naive(&list, a));
            }
        }
    }
}
