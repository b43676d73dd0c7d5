//! Wire formats: one module per protocol, each with a zero-copy view over bytes
//! and a plain `Repr` with `parse` / `emit`.
//!
//! # The promise
//! A view built with `new_checked` has been checked to be long enough for every
//! fixed field its getters and setters touch; after that, **no accessor panics**,
//! whatever the bytes say. `new_unchecked` skips the check and is for buffers the
//! caller built itself (the fast path, after a stage has already validated
//! lengths). Untrusted bytes always go through `new_checked`.
//!
//! Protocol numbers are enums with an `Unknown(n)` variant so that unknown values
//! round-trip instead of failing.

pub mod arp;
pub mod checksum;
pub mod eth;
pub mod icmp;
pub mod ipip;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use eth::MacAddr;

/// What is wrong with a buffer that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header, or than a length field inside it claims.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// A field holds a value the format does not allow.
    #[error("malformed {field}: {value}")]
    Malformed { field: &'static str, value: u32 },
    /// A checksum does not verify.
    #[error("bad checksum")]
    Checksum,
}

pub type Result<T> = core::result::Result<T, Error>;

#[inline]
pub(crate) fn check_len(buf: &[u8], need: usize) -> Result<()> {
    if buf.len() < need {
        Err(Error::Truncated {
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Defines an enum over a numeric protocol field with an `Unknown` fallback.
macro_rules! enum_with_unknown {
    ($(#[$m:meta])* pub enum $name:ident($ty:ty) { $( $(#[$vm:meta])* $var:ident = $val:expr ),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vm])* $var, )+
            Unknown($ty),
        }

        impl From<$ty> for $name {
            #[inline]
            fn from(v: $ty) -> Self {
                match v {
                    $( $val => $name::$var, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $ty {
            #[inline]
            fn from(v: $name) -> Self {
                match v {
                    $( $name::$var => $val, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use enum_with_unknown;
