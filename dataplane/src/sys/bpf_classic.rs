//! Classic BPF (`SO_ATTACH_FILTER`) socket filters: the instruction encoding
//! from `linux/filter.h` and `linux/bpf_common.h`, and a small interpreter for
//! checking a program in userspace.
//!
//! Written here because no maintained crate builds classic socket filters; the
//! few instructions Sluice's uplink filter needs are a page of constants. The
//! interpreter covers exactly those instructions and follows the kernel's rules
//! for them (a load past the end of the packet ends the program with 0), so
//! unit tests can run a filter over frames without root or a kernel.

/// The longest program the kernel accepts (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// What a filter returns to keep the whole packet.
pub const ACCEPT: u32 = u32::MAX;
/// What a filter returns to drop the packet.
pub const DROP: u32 = 0;

// Instruction classes.
pub const LD: u16 = 0x00;
pub const LDX: u16 = 0x01;
pub const ALU: u16 = 0x04;
pub const JMP: u16 = 0x05;
pub const RET: u16 = 0x06;
pub const MISC: u16 = 0x07;
// Load sizes.
pub const W: u16 = 0x00;
pub const H: u16 = 0x08;
pub const B: u16 = 0x10;
// Load modes.
pub const IMM: u16 = 0x00;
pub const ABS: u16 = 0x20;
pub const IND: u16 = 0x40;
/// `ldxb 4*([k]&0xf)`: the IPv4 header length.
pub const MSH: u16 = 0xa0;
// ALU and jump operations.
pub const AND: u16 = 0x50;
pub const JA: u16 = 0x00;
pub const JEQ: u16 = 0x10;
pub const JGT: u16 = 0x20;
pub const JSET: u16 = 0x40;
// Operand source.
pub const K: u16 = 0x00;
pub const X: u16 = 0x08;
// Register moves (`BPF_MISC`).
pub const TAX: u16 = 0x00;
pub const TXA: u16 = 0x80;

/// Where the kernel's extra loads begin: an absolute load at `ANC_OFF + n`
/// reads a field of the socket buffer instead of packet bytes (`SKF_AD_OFF`).
pub const ANC_OFF: u32 = (-0x1000i32) as u32;
/// The packet type (`PACKET_HOST`, `PACKET_BROADCAST`, ...) (`SKF_AD_PKTTYPE`).
pub const ANC_PKTTYPE: u32 = 4;

/// `skb->pkt_type` values (`linux/if_packet.h`).
pub const PACKET_HOST: u32 = 0;
pub const PACKET_BROADCAST: u32 = 1;
pub const PACKET_MULTICAST: u32 = 2;
pub const PACKET_OTHERHOST: u32 = 3;
pub const PACKET_OUTGOING: u32 = 4;

/// One instruction, laid out as the kernel's `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    /// A non-jumping instruction.
    pub const fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// A conditional jump: `jt` or `jf` instructions forward from the next one.
    pub const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    pub const fn ret(k: u32) -> Insn {
        Insn::stmt(RET | K, k)
    }
}

/// What the kernel would say about a packet that reaches a program, for
/// [`run`]: the bytes from the link-layer header on, and `skb->pkt_type`.
#[derive(Debug, Clone, Copy)]
pub struct Skb<'a> {
    pub data: &'a [u8],
    pub pkt_type: u32,
}

/// Why [`run`] could not finish a program (the kernel would have refused to
/// attach it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("instruction {at}: opcode {code:#06x} is not one this interpreter runs")]
    Unsupported { at: usize, code: u16 },
    #[error("instruction {at}: jumps or falls past the end of the program")]
    OffTheEnd { at: usize },
    #[error("instruction {at}: extra load {k:#x} is not one this interpreter knows")]
    UnknownAncillary { at: usize, k: u32 },
}

/// Runs `prog` over `skb` and returns what it returns: 0 drops the packet,
/// anything else keeps that many bytes of it.
pub fn run(prog: &[Insn], skb: Skb<'_>) -> Result<u32, RunError> {
    let (mut a, mut x) = (0u32, 0u32);
    let mut pc = 0usize;
    // Big-endian load of `size` bytes at `at`; None past the end of the packet.
    let load = |at: u32, size: usize| -> Option<u32> {
        let at = usize::try_from(at).ok()?;
        let b = skb.data.get(at..at.checked_add(size)?)?;
        Some(b.iter().fold(0u32, |v, &byte| (v << 8) | u32::from(byte)))
    };
    loop {
        let Some(&i) = prog.get(pc) else {
            return Err(RunError::OffTheEnd { at: pc });
        };
        let unsupported = RunError::Unsupported {
            at: pc,
            code: i.code,
        };
        pc += 1;
        let size = match i.code & 0x18 {
            W => 4,
            H => 2,
            B => 1,
            _ => 0,
        };
        match i.code & 0x07 {
            LD => {
                let at = match i.code & 0xe0 {
                    IMM if size == 4 => {
                        a = i.k;
                        continue;
                    }
                    ABS if i.k >= ANC_OFF => {
                        a = match i.k - ANC_OFF {
                            ANC_PKTTYPE => skb.pkt_type,
                            _ => return Err(RunError::UnknownAncillary { at: pc - 1, k: i.k }),
                        };
                        continue;
                    }
                    // The kernel's other negative offsets (network-header relative) are
                    // not used by Sluice.
                    ABS if i.k < 0x8000_0000 => i.k,
                    IND => x.wrapping_add(i.k),
                    _ => return Err(unsupported),
                };
                if size == 0 {
                    return Err(unsupported);
                }
                match load(at, size) {
                    Some(v) => a = v,
                    None => return Ok(DROP),
                }
            }
            LDX if i.code == LDX | B | MSH => match load(i.k, 1) {
                Some(v) => x = (v & 0xf) * 4,
                None => return Ok(DROP),
            },
            ALU if i.code == ALU | AND | K => a &= i.k,
            MISC if i.code == MISC | TAX => x = a,
            MISC if i.code == MISC | TXA => a = x,
            RET if i.code == RET | K => return Ok(i.k),
            JMP if i.code == JMP | JA => pc = pc.saturating_add(i.k as usize),
            JMP if i.code & 0x08 == K => {
                let taken = match i.code & 0xf0 {
                    JEQ => a == i.k,
                    JGT => a > i.k,
                    JSET => a & i.k != 0,
                    _ => return Err(unsupported),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            _ => return Err(unsupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(data: &[u8]) -> Skb<'_> {
        Skb {
            data,
            pkt_type: PACKET_HOST,
        }
    }

    #[test]
    fn loads_jumps_and_returns() {
        // Accept IPv4 frames whose protocol is UDP, keeping 64 bytes.
        let prog = [
            Insn::stmt(LD | H | ABS, 12),
            Insn::jump(JMP | JEQ | K, 0x0800, 0, 3),
            Insn::stmt(LD | B | ABS, 23),
            Insn::jump(JMP | JEQ | K, 17, 0, 1),
            Insn::ret(64),
            Insn::ret(DROP),
        ];
        let mut f = [0u8; 40];
        f[12] = 0x08;
        f[23] = 17;
        assert_eq!(run(&prog, host(&f)), Ok(64));
        f[23] = 6;
        assert_eq!(run(&prog, host(&f)), Ok(DROP));
        // Too short for the protocol byte: the load ends the program with 0.
        assert_eq!(run(&prog, host(&f[..20])), Ok(DROP));
    }

    #[test]
    fn header_length_and_indirect_loads() {
        let prog = [
            Insn::stmt(LDX | B | MSH, 14),
            Insn::stmt(LD | H | IND, 16),
            Insn::stmt(MISC | TAX, 0),
            Insn::stmt(LD | W | IMM, 7),
            Insn::stmt(MISC | TXA, 0),
            Insn::stmt(ALU | AND | K, 0xff00),
            Insn::jump(JMP | JGT | K, 0x1000, 0, 1),
            Insn::ret(ACCEPT),
            Insn::ret(DROP),
        ];
        let mut f = vec![0u8; 14 + 24 + 8];
        f[14] = 0x46; // IHL 6: 24 bytes
        f[14 + 24 + 2..14 + 24 + 4].copy_from_slice(&4789u16.to_be_bytes());
        // 4789 = 0x12b5; & 0xff00 = 0x1200 > 0x1000.
        assert_eq!(run(&prog, host(&f)), Ok(ACCEPT));
        f[14] = 0x45;
        assert_eq!(run(&prog, host(&f)), Ok(DROP));
    }

    #[test]
    fn ancillary_and_bad_programs() {
        let prog = [
            Insn::stmt(LD | W | ABS, ANC_OFF + ANC_PKTTYPE),
            Insn::jump(JMP | JEQ | K, PACKET_HOST, 0, 1),
            Insn::ret(ACCEPT),
            Insn::ret(DROP),
        ];
        let f = [0u8; 14];
        let skb = |pkt_type| Skb { data: &f, pkt_type };
        assert_eq!(run(&prog, skb(PACKET_HOST)), Ok(ACCEPT));
        assert_eq!(run(&prog, skb(PACKET_OTHERHOST)), Ok(DROP));
        assert_eq!(
            run(&prog[..2], skb(PACKET_HOST)),
            Err(RunError::OffTheEnd { at: 2 })
        );
        assert!(matches!(
            run(&[Insn::stmt(LD | W | ABS, ANC_OFF + 99)], skb(PACKET_HOST)),
            Err(RunError::UnknownAncillary { .. })
        ));
        // A return of A (not K) is not among the instructions Sluice uses.
        assert_eq!(
            run(&[Insn::stmt(RET | 0x10, 0)], skb(PACKET_HOST)),
            Err(RunError::Unsupported { at: 0, code: 0x16 })
        );
        // An unconditional jump far past the end does not wrap around.
        assert_eq!(
            run(&[Insn::stmt(JMP | JA, u32::MAX)], skb(PACKET_HOST)),
            Err(RunError::OffTheEnd {
                at: 1 + u32::MAX as usize
            })
        );
    }
}
