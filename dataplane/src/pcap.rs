//! Classic libpcap files (not pcapng), read from and written to memory.
//!
//! Sluice checks its wire formats and stages against frames the Linux kernel
//! really produced (see `fixtures/README.md`), and tests and tools dump what
//! the pipeline emits so that tcpdump and tshark can read it. Both need only
//! the classic format, so this is a few dozen lines instead of a dependency.
//!
//! The reader borrows the file's bytes and hands out records that borrow them
//! too: no copies, no allocation, no I/O. Every length in the file is checked
//! before it is used, so **no input makes the reader panic**; a damaged file
//! yields an [`Error`] and then ends.
//!
//! The writer always writes little-endian, microsecond, Ethernet files with a
//! snaplen of 65535, which is what every pcap tool reads.

use std::io::Write;

/// Link type of Ethernet II frames (`LINKTYPE_ETHERNET`).
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Snaplen the writer declares; longer frames are cut to it, as tcpdump does.
pub const WRITER_SNAPLEN: u32 = 65535;

const GLOBAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;

// The magic number as a little-endian file stores it; the byte-swapped value
// means the file was written big-endian.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;

/// Global header layout.
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION_MAJOR: Range<usize> = 4..6;
    pub const VERSION_MINOR: Range<usize> = 6..8;
    // 8..12 thiszone and 12..16 sigfigs: always zero in practice, ignored.
    pub const SNAPLEN: Range<usize> = 16..20;
    pub const LINKTYPE: Range<usize> = 20..24;
}

/// Record header layout, relative to the record's start.
mod record {
    use core::ops::Range;
    pub const TS_SEC: Range<usize> = 0..4;
    pub const TS_SUBSEC: Range<usize> = 4..8;
    pub const CAPLEN: Range<usize> = 8..12;
    pub const ORIG_LEN: Range<usize> = 12..16;
}

/// What is wrong with a pcap file, or what stopped the writer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shorter than the 24-byte global header.
    #[error("truncated pcap global header: need 24 bytes, have {have}")]
    TruncatedHeader { have: usize },
    /// The first four bytes are not a classic pcap magic number in either byte
    /// order (pcapng files start with 0x0a0d0d0a and are not supported).
    #[error("bad pcap magic number {magic:#010x}: not a classic libpcap file")]
    BadMagic { magic: u32 },
    /// A major version other than 2.
    #[error("unsupported pcap version {major}.{minor}: expected 2.x")]
    UnsupportedVersion { major: u16, minor: u16 },
    /// The caller asked for Ethernet frames and the file holds something else.
    #[error("unsupported link type {linktype}: expected {LINKTYPE_ETHERNET} (Ethernet)")]
    UnsupportedLinktype { linktype: u16 },
    /// The file ends inside a 16-byte record header.
    #[error(
        "record {index} at offset {offset}: truncated record header, need 16 bytes, have {have}"
    )]
    TruncatedRecord {
        index: usize,
        offset: usize,
        have: usize,
    },
    /// A record claims more captured bytes than the file has left.
    #[error(
        "record {index} at offset {offset}: captured length {caplen} is longer than the {have} bytes left in the file"
    )]
    RecordPastEnd {
        index: usize,
        offset: usize,
        caplen: u32,
        have: usize,
    },
    /// The writer was given a microsecond field of a second or more.
    #[error("timestamp microseconds {usec} out of range: must be below 1000000")]
    BadTimestamp { usec: u32 },
    /// The writer was given a frame whose length does not fit the format's
    /// 32-bit length field.
    #[error("frame of {len} bytes does not fit a pcap record")]
    FrameTooLong { len: usize },
    /// The sink the writer writes to failed.
    #[error("writing pcap: {0}")]
    Io(#[from] std::io::Error),
}

/// Units of [`Record::ts_subsec`], fixed per file by its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Micros,
    Nanos,
}

/// One captured frame, borrowing the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Seconds since the Unix epoch.
    pub ts_sec: u32,
    /// Fraction of the second, in the file's [`Precision`].
    pub ts_subsec: u32,
    /// Units of `ts_subsec`.
    pub precision: Precision,
    /// Length of the frame on the wire; more than `data.len()` when the capture
    /// cut it to the snaplen.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
}

impl Record<'_> {
    /// Nanoseconds since the epoch, whatever the file's precision.
    pub fn timestamp_ns(&self) -> u64 {
        let subsec = match self.precision {
            Precision::Micros => u64::from(self.ts_subsec) * 1_000,
            Precision::Nanos => u64::from(self.ts_subsec),
        };
        u64::from(self.ts_sec) * 1_000_000_000 + subsec
    }

    /// Whether the capture cut the frame short.
    pub fn is_truncated(&self) -> bool {
        u64::from(self.orig_len) > self.data.len() as u64
    }
}

/// Reads the records of a classic pcap file held in memory.
///
/// Construct with [`Reader::new`] (any link type) or [`Reader::ethernet`],
/// then iterate. The iterator yields `Err` at most once, for the first damaged
/// record, and then ends: after a bad length nothing later can be trusted.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
    precision: Precision,
    version: (u16, u16),
    snaplen: u32,
    linktype: u16,
    offset: usize,
    index: usize,
    done: bool,
}

impl<'a> Reader<'a> {
    /// Parses the global header; records are read lazily by iterating.
    pub fn new(bytes: &'a [u8]) -> Result<Self, Error> {
        let Some(header) = bytes.get(..GLOBAL_HEADER_LEN) else {
            return Err(Error::TruncatedHeader { have: bytes.len() });
        };
        let magic = u32::from_le_bytes(array4(&header[field::MAGIC]));
        let (big_endian, precision) = match magic {
            MAGIC_MICROS => (false, Precision::Micros),
            MAGIC_NANOS => (false, Precision::Nanos),
            m if m == MAGIC_MICROS.swap_bytes() => (true, Precision::Micros),
            m if m == MAGIC_NANOS.swap_bytes() => (true, Precision::Nanos),
            _ => return Err(Error::BadMagic { magic }),
        };
        let u16_at = |r: core::ops::Range<usize>| {
            let b = [header[r.start], header[r.start + 1]];
            if big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let version = (u16_at(field::VERSION_MAJOR), u16_at(field::VERSION_MINOR));
        if version.0 != 2 {
            return Err(Error::UnsupportedVersion {
                major: version.0,
                minor: version.1,
            });
        }
        let snaplen = read_u32(&header[field::SNAPLEN], big_endian);
        // The upper 16 bits carry FCS length flags (and are reserved); the
        // link type proper is the lower half.
        let linktype = (read_u32(&header[field::LINKTYPE], big_endian) & 0xffff) as u16;
        Ok(Reader {
            bytes,
            big_endian,
            precision,
            version,
            snaplen,
            linktype,
            offset: GLOBAL_HEADER_LEN,
            index: 0,
            done: false,
        })
    }

    /// Like [`Reader::new`], but only for Ethernet captures, so that callers
    /// who hand frames to an Ethernet parser cannot be fed anything else.
    pub fn ethernet(bytes: &'a [u8]) -> Result<Self, Error> {
        let reader = Reader::new(bytes)?;
        if reader.linktype != LINKTYPE_ETHERNET {
            return Err(Error::UnsupportedLinktype {
                linktype: reader.linktype,
            });
        }
        Ok(reader)
    }

    /// The file's link type (1 is Ethernet).
    pub fn linktype(&self) -> u16 {
        self.linktype
    }

    /// Longest frame the capture kept, as the file declares it.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Units of the records' sub-second timestamps.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Format version as (major, minor); major is always 2.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// Whether the file was written big-endian.
    pub fn is_big_endian(&self) -> bool {
        self.big_endian
    }

    fn next_record(&mut self) -> Result<Option<Record<'a>>, Error> {
        let rest = self.bytes.get(self.offset..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            return Err(Error::TruncatedRecord {
                index: self.index,
                offset: self.offset,
                have: rest.len(),
            });
        };
        let field = |r: core::ops::Range<usize>| read_u32(&header[r], self.big_endian);
        let caplen = field(record::CAPLEN);
        let body = &rest[RECORD_HEADER_LEN..];
        let data = usize::try_from(caplen)
            .ok()
            .and_then(|n| body.get(..n))
            .ok_or(Error::RecordPastEnd {
                index: self.index,
                offset: self.offset,
                caplen,
                have: body.len(),
            })?;
        let rec = Record {
            ts_sec: field(record::TS_SEC),
            ts_subsec: field(record::TS_SUBSEC),
            precision: self.precision,
            orig_len: field(record::ORIG_LEN),
            data,
        };
        // Cannot overflow: data lies inside `bytes`.
        self.offset += RECORD_HEADER_LEN + data.len();
        self.index += 1;
        Ok(Some(rec))
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Record<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_record().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

impl core::iter::FusedIterator for Reader<'_> {}

/// The frames of an Ethernet pcap file, in order, for tests and tools that
/// want every frame and no timestamps.
pub fn records(bytes: &[u8]) -> Result<Vec<&[u8]>, Error> {
    Reader::ethernet(bytes)?
        .map(|r| r.map(|r| r.data))
        .collect()
}

/// Writes a classic pcap file: little-endian, microsecond timestamps,
/// Ethernet, snaplen [`WRITER_SNAPLEN`].
///
/// Call order: [`Writer::new`] writes the global header at once, then
/// [`Writer::write_frame`] per frame, then [`Writer::into_inner`] to get the
/// sink back. Nothing is buffered here; wrap the sink in a `BufWriter` when it
/// is a file.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    /// Writes the global header to `out`.
    pub fn new(mut out: W) -> Result<Self, Error> {
        let mut header = [0u8; GLOBAL_HEADER_LEN];
        header[field::MAGIC].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        header[field::VERSION_MAJOR].copy_from_slice(&2u16.to_le_bytes());
        header[field::VERSION_MINOR].copy_from_slice(&4u16.to_le_bytes());
        header[field::SNAPLEN].copy_from_slice(&WRITER_SNAPLEN.to_le_bytes());
        header[field::LINKTYPE].copy_from_slice(&u32::from(LINKTYPE_ETHERNET).to_le_bytes());
        out.write_all(&header)?;
        Ok(Writer { out })
    }

    /// Appends one frame captured at `ts_sec` seconds and `ts_usec`
    /// microseconds. A frame longer than the snaplen is cut to it and keeps its
    /// full length as the original length, so readers see it was truncated.
    pub fn write_frame(&mut self, ts_sec: u32, ts_usec: u32, frame: &[u8]) -> Result<(), Error> {
        if ts_usec >= 1_000_000 {
            return Err(Error::BadTimestamp { usec: ts_usec });
        }
        let orig_len =
            u32::try_from(frame.len()).map_err(|_| Error::FrameTooLong { len: frame.len() })?;
        let caplen = orig_len.min(WRITER_SNAPLEN);
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[record::TS_SEC].copy_from_slice(&ts_sec.to_le_bytes());
        header[record::TS_SUBSEC].copy_from_slice(&ts_usec.to_le_bytes());
        header[record::CAPLEN].copy_from_slice(&caplen.to_le_bytes());
        header[record::ORIG_LEN].copy_from_slice(&orig_len.to_le_bytes());
        self.out.write_all(&header)?;
        // caplen <= frame.len(), so the slice is in bounds.
        self.out.write_all(&frame[..caplen as usize])?;
        Ok(())
    }

    /// The sink, for inspection while writing.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Flushes and returns the sink.
    pub fn into_inner(mut self) -> Result<W, Error> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn array4(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn read_u32(b: &[u8], big_endian: bool) -> u32 {
    if big_endian {
        u32::from_be_bytes(array4(b))
    } else {
        u32::from_le_bytes(array4(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNDERLAY: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vxlan-underlay.pcap"
    ));
    const INNER: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vxlan-inner.pcap"
    ));
    const POD: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/vxlan-pod.pcap"
    ));

    /// Outer Ethernet + IPv4 + UDP + VXLAN headers in front of each inner frame.
    const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;

    fn ethertype(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[12], frame[13]])
    }

    #[test]
    fn writer_then_reader_round_trips() {
        let frames: [&[u8]; 3] = [
            &[0xaa; 60],
            &[],
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 0],
        ];
        let mut w = Writer::new(Vec::new()).unwrap();
        for (i, f) in frames.iter().enumerate() {
            w.write_frame(1_700_000_000 + i as u32, 999_999 - i as u32, f)
                .unwrap();
        }
        let bytes = w.into_inner().unwrap();
        assert_eq!(bytes.len(), 24 + 3 * 16 + 60 + 14);

        let r = Reader::ethernet(&bytes).unwrap();
        assert_eq!(r.linktype(), LINKTYPE_ETHERNET);
        assert_eq!(r.snaplen(), WRITER_SNAPLEN);
        assert_eq!(r.precision(), Precision::Micros);
        assert_eq!(r.version(), (2, 4));
        assert!(!r.is_big_endian());
        let got: Vec<Record<'_>> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        for (i, (rec, f)) in got.iter().zip(frames).enumerate() {
            assert_eq!(rec.data, f);
            assert_eq!(rec.orig_len as usize, f.len());
            assert_eq!(rec.ts_sec, 1_700_000_000 + i as u32);
            assert_eq!(rec.ts_subsec, 999_999 - i as u32);
            assert!(!rec.is_truncated());
        }
        assert_eq!(got[0].timestamp_ns(), 1_700_000_000_999_999_000);
        assert_eq!(records(&bytes).unwrap(), frames.to_vec());
    }

    #[test]
    fn writer_cuts_frames_to_snaplen_and_rejects_bad_timestamps() {
        let big = vec![7u8; WRITER_SNAPLEN as usize + 10];
        let mut w = Writer::new(Vec::new()).unwrap();
        w.write_frame(0, 0, &big).unwrap();
        assert!(matches!(
            w.write_frame(0, 1_000_000, &big),
            Err(Error::BadTimestamp { usec: 1_000_000 })
        ));
        let bytes = w.into_inner().unwrap();
        let rec = Reader::new(&bytes).unwrap().next().unwrap().unwrap();
        assert_eq!(rec.data.len(), WRITER_SNAPLEN as usize);
        assert_eq!(rec.orig_len as usize, big.len());
        assert!(rec.is_truncated());
    }

    /// A big-endian nanosecond file with one raw-IP (link type 101) record,
    /// written by hand as a big-endian host's libpcap would.
    #[test]
    fn reads_big_endian_nanosecond_files() {
        let mut f = Vec::new();
        f.extend_from_slice(&MAGIC_NANOS.to_be_bytes());
        f.extend_from_slice(&2u16.to_be_bytes());
        f.extend_from_slice(&4u16.to_be_bytes());
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&262_144u32.to_be_bytes());
        f.extend_from_slice(&101u32.to_be_bytes());
        for v in [5u32, 123_456_789, 3, 40] {
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x45, 0, 0]);

        let mut r = Reader::new(&f).unwrap();
        assert!(r.is_big_endian());
        assert_eq!(r.precision(), Precision::Nanos);
        assert_eq!(r.linktype(), 101);
        assert_eq!(r.snaplen(), 262_144);
        let rec = r.next().unwrap().unwrap();
        assert_eq!(rec.data, &[0x45, 0, 0]);
        assert_eq!(rec.orig_len, 40);
        assert_eq!(rec.timestamp_ns(), 5_123_456_789);
        assert!(r.next().is_none());
        assert!(matches!(
            Reader::ethernet(&f),
            Err(Error::UnsupportedLinktype { linktype: 101 })
        ));
        assert!(matches!(
            records(&f),
            Err(Error::UnsupportedLinktype { linktype: 101 })
        ));
    }

    #[test]
    fn reports_what_is_wrong() {
        assert!(matches!(
            Reader::new(&[0xd4, 0xc3]),
            Err(Error::TruncatedHeader { have: 2 })
        ));
        let pcapng = [0x0a, 0x0d, 0x0d, 0x0a].repeat(6);
        assert!(matches!(
            Reader::new(&pcapng),
            Err(Error::BadMagic { magic: 0x0a0d_0d0a })
        ));
        let mut v1 = UNDERLAY[..24].to_vec();
        v1[4] = 1;
        assert!(matches!(
            Reader::new(&v1),
            Err(Error::UnsupportedVersion { major: 1, minor: 4 })
        ));

        // Cut inside the first record's header, then inside its data.
        let mut r = Reader::new(&UNDERLAY[..30]).unwrap();
        assert!(matches!(
            r.next(),
            Some(Err(Error::TruncatedRecord {
                index: 0,
                offset: 24,
                have: 6
            }))
        ));
        assert!(r.next().is_none());
        let mut r = Reader::new(&UNDERLAY[..24 + 16 + 10]).unwrap();
        assert!(matches!(
            r.next(),
            Some(Err(Error::RecordPastEnd {
                index: 0,
                offset: 24,
                have: 10,
                ..
            }))
        ));
        assert!(r.next().is_none());

        // A record whose length field points far past the end.
        let mut huge = UNDERLAY.to_vec();
        huge[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            records(&huge),
            Err(Error::RecordPastEnd {
                caplen: u32::MAX,
                ..
            })
        ));

        let msg = Error::BadMagic { magic: 0x0a0d_0d0a }.to_string();
        assert!(msg.contains("0x0a0d0d0a"), "{msg}");
    }

    #[test]
    fn fixtures_are_ethernet_ipv4_and_complete() {
        for (name, file) in [("underlay", UNDERLAY), ("inner", INNER), ("pod", POD)] {
            let r = Reader::ethernet(file).unwrap();
            assert_eq!(r.linktype(), 1, "{name}");
            assert_eq!(r.snaplen(), 262_144, "{name}");
            let recs: Vec<Record<'_>> = r.collect::<Result<_, _>>().unwrap();
            assert_eq!(recs.len(), 20, "{name}");
            assert_eq!(ethertype(recs[0].data), 0x0800, "{name}");
            assert!(recs.iter().all(|r| !r.is_truncated()), "{name}");
        }
    }

    /// The property later byte-for-byte tests rely on: every underlay frame is
    /// the VXLAN device's frame behind exactly 50 bytes of outer headers.
    #[test]
    fn underlay_frames_are_inner_frames_behind_vxlan_headers() {
        let outer = records(UNDERLAY).unwrap();
        let inner = records(INNER).unwrap();
        assert_eq!(outer.len(), inner.len());
        for (o, i) in outer.iter().zip(&inner) {
            assert_eq!(&o[VXLAN_OVERHEAD..], *i);
            let p = etherparse::SlicedPacket::from_ethernet(o).unwrap();
            let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
                panic!("outer frame is not UDP");
            };
            assert_eq!(udp.destination_port(), 4789);
            // VXLAN: I flag set, VNI 4096.
            assert_eq!(&udp.payload()[..8], &[0x08, 0, 0, 0, 0, 0x10, 0, 0]);
        }
        assert_eq!(outer[0].len(), 148);
    }

    fn magic() -> impl Strategy<Value = [u8; 4]> {
        prop_oneof![
            Just(MAGIC_MICROS.to_le_bytes()),
            Just(MAGIC_MICROS.to_be_bytes()),
            Just(MAGIC_NANOS.to_le_bytes()),
            Just(MAGIC_NANOS.to_be_bytes()),
            any::<[u8; 4]>(),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(r) = Reader::new(&bytes) {
                for rec in r {
                    let _ = rec.map(|r| (r.timestamp_ns(), r.is_truncated()));
                }
            }
            let _ = records(&bytes);
        }

        /// Mostly valid headers, so the fuzzing reaches the record parser.
        #[test]
        fn arbitrary_records_never_panic(
            magic in magic(),
            version in prop_oneof![Just([2u8, 0, 4, 0]), Just([0, 2, 0, 4]), any::<[u8; 4]>()],
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(&version);
            bytes.extend_from_slice(&rest);
            let mut total = 0usize;
            if let Ok(r) = Reader::new(&bytes) {
                let mut errors = 0;
                for rec in r {
                    match rec {
                        Ok(rec) => total += rec.data.len() + RECORD_HEADER_LEN,
                        Err(_) => errors += 1,
                    }
                }
                prop_assert!(errors <= 1);
                prop_assert!(total + GLOBAL_HEADER_LEN <= bytes.len());
            }
        }
    }
}
