//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

use std::net::Ipv4Addr;

/// One's-complement sum of `data` as big-endian 16-bit words, folded to 16 bits
/// (not complemented). An odd trailing byte is padded with zero.
///
/// Summed as native-order 64-bit words with the carries counted apart, four
/// words per round, then folded and byte-swapped once: a one's-complement sum
/// is the same up to a byte swap whatever the order the words are read in
/// (RFC 1071 2(B)). No per-word byte swap, 8 bytes per add.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    let (mut acc, mut carries) = (0u64, 0u64);
    let mut add = |w: u64| {
        let (s, o) = acc.overflowing_add(w);
        acc = s;
        carries += u64::from(o);
    };
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        add(word(&b[0..8]));
        add(word(&b[8..16]));
        add(word(&b[16..24]));
        add(word(&b[24..32]));
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        add(word(w));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // Zero padding after the last byte: an odd byte is the high half of
        // its big-endian word, as RFC 1071 pads it.
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        add(u64::from_ne_bytes(last));
    }
    // `carries` is at most len / 8: adding it back overflows at most once more.
    let (s, o) = acc.overflowing_add(carries);
    u16::from_be(fold(s + u64::from(o)))
}

/// [`sum`] of a 20-byte IPv4 header without options: five word loads, no loop,
/// no bounds checks (the fast path's common case).
#[inline(always)]
pub fn sum20(h: &[u8; 20]) -> u16 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold(w(0) + w(4) + w(8) + w(12) + w(16))
}

/// Whether a 20-byte IPv4 header's checksum verifies, i.e. `sum20(h) ==
/// 0xffff`, computed on native-order words: a one's-complement sum is the
/// same up to a byte swap whatever the byte order (RFC 1071 2(B)), and 0xffff
/// is its own swap, so no word needs swapping.
#[inline(always)]
pub fn verify20(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

/// Folds a wide one's-complement accumulator to 16 bits: 64 to 32 to 16 with
/// end-around carries, no loop. Zero only for a zero accumulator.
#[inline(always)]
pub fn fold(acc: u64) -> u16 {
    let (s, c) = (acc as u32).overflowing_add((acc >> 32) as u32);
    // With a carry out, `s` is at most 2^32 - 2: adding it back cannot overflow.
    let s = s + u32::from(c);
    let (s, c) = (s as u16).overflowing_add((s >> 16) as u16);
    s + u16::from(c)
}

/// One's-complement addition of partial sums.
#[inline]
pub fn combine(parts: &[u16]) -> u16 {
    fold(parts.iter().map(|&p| u64::from(p)).sum())
}

/// The checksum field value for `data` (complement of the sum).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Partial sum of the IPv4 pseudo-header for TCP/UDP.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    let acc = u64::from(u16::from_be_bytes([s[0], s[1]]))
        + u64::from(u16::from_be_bytes([s[2], s[3]]))
        + u64::from(u16::from_be_bytes([d[0], d[1]]))
        + u64::from(u16::from_be_bytes([d[2], d[3]]))
        + u64::from(protocol)
        + u64::from(len);
    fold(acc)
}

/// RFC 1624 eqn. 3: the new checksum field when one 16-bit word changes from
/// `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!csum) + u64::from(!old) + u64::from(new))
}

/// RFC 1624 for a 32-bit field (an address).
#[inline]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(csum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sum word by word, as RFC 1071 writes it.
    fn sum_reference(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for c in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn wide_sum_matches_word_by_word() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut data = vec![0u8; 1600];
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for len in (0..200).chain([1399, 1400, 1448, 1459, 1500, 1600]) {
            for start in [0, 1, 3] {
                let d = &data[start..(start + len).min(data.len())];
                assert_eq!(sum(d), sum_reference(d), "len {len} start {start}");
            }
        }
        // All ones: every add carries.
        let ones = vec![0xffu8; 1001];
        assert_eq!(sum(&ones), sum_reference(&ones));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these bytes is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(sum(&data[..7]), fold(0x0001 + 0xf203 + 0xf4f5 + 0xf600));
    }

    #[test]
    fn fold_matches_repeated_folding() {
        let slow = |mut a: u64| {
            while a >> 16 != 0 {
                a = (a & 0xffff) + (a >> 16);
            }
            a as u16
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for a in [
            0,
            1,
            0xffff,
            0x1_0000,
            0x1_fffe,
            u64::from(u32::MAX),
            u64::MAX,
            5 * 0xffff_ffff,
        ] {
            assert_eq!(fold(a), slow(a), "{a:#x}");
        }
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for a in [x, x >> 20, x >> 40, x & 0xffff_ffff] {
                assert_eq!(fold(a), slow(a), "{a:#x}");
            }
        }
    }

    #[test]
    fn verify20_matches_sum20() {
        let mut x: u32 = 0x1234_5679;
        for _ in 0..20_000 {
            let mut h: [u8; 20] = std::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            });
            assert_eq!(verify20(&h), sum20(&h) == 0xffff, "{h:?}");
            // And with a correct checksum filled in.
            h[10..12].copy_from_slice(&[0, 0]);
            let c = !sum20(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert!(verify20(&h), "{h:?}");
        }
        assert!(verify20(&[0xff; 20]) == (sum20(&[0xff; 20]) == 0xffff));
        assert!(!verify20(&[0; 20]));
    }

    #[test]
    fn sum20_matches_sum() {
        let h: [u8; 20] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        assert_eq!(sum20(&h), sum(&h));
        assert_eq!(sum20(&[0xff; 20]), sum(&[0xff; 20]));
    }

    #[test]
    fn incremental_matches_full() {
        let mut hdr = [
            0x45u8, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 0x40, 1, 0, 0, 198, 19, 1, 10, 198, 19, 2, 10,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(sum(&hdr), 0xffff);
        // TTL 64 -> 63 changes the word (ttl, proto).
        let old = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] -= 1;
        let new = u16::from_be_bytes([hdr[8], hdr[9]]);
        let c2 = update16(c, old, new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c2, checksum(&hdr));
    }
}
