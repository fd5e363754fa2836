//! The NBD wire format, as far as cbtfs speaks it: the fixed newstyle
//! handshake with structured replies and metadata contexts, and the
//! transmission commands READ, BLOCK_STATUS and DISC. (Reference: the NBD
//! protocol document, `doc/proto.md` of the NetworkBlockDevice project.)
//!
//! Everything here is pure: bytes in, typed values or [`ProtoError`] out,
//! never a panic, whatever the server sends. The parsers are exercised
//! with random and mutated input in the tests below.

use std::ops::Range;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_BIT: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR_BIT | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR_BIT | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const CMD_READ: u16 = 0;
pub const CMD_DISC: u16 = 2;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const REPLY_FLAG_DONE: u16 = 1;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// `base:allocation` flags.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:*` flag.
pub const STATE_DIRTY: u32 = 1;

/// Largest payload of one reply chunk accepted: a read is asked for in
/// pieces of at most [`MAX_READ`], and a block status reply of that many
/// extents is far larger than any server sends.
pub const MAX_CHUNK: u32 = 64 << 20;
/// Bytes asked for per READ: within every server's limit (qemu's is 32 MiB).
pub const MAX_READ: u32 = 4 << 20;
/// Bytes of option reply data accepted.
pub const MAX_OPTION_REPLY: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("not an NBD server (bad greeting)")]
    NotNbd,
    #[error("the server does not speak the fixed newstyle handshake")]
    OldStyle,
    #[error("malformed reply: {0}")]
    Malformed(String),
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}
fn bad(what: impl Into<String>) -> ProtoError {
    ProtoError::Malformed(what.into())
}

/// Checks the server's 18-byte greeting; returns its handshake flags.
pub fn parse_greeting(b: &[u8; 18]) -> Result<u16, ProtoError> {
    if be64(&b[0..8]) != NBDMAGIC {
        return Err(ProtoError::NotNbd);
    }
    if be64(&b[8..16]) != IHAVEOPT {
        return Err(ProtoError::OldStyle);
    }
    let flags = be16(&b[16..18]);
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(ProtoError::OldStyle);
    }
    Ok(flags)
}

/// An option request: magic, option, length, data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The data of NBD_OPT_GO: the export name, and a request for block sizes.
pub fn go_data(export: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    v
}

/// The data of NBD_OPT_SET_META_CONTEXT: the export and the contexts.
pub fn meta_context_data(export: &str, queries: &[String]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

/// Header of an option reply: (option, reply type, data length).
pub fn parse_option_reply_header(b: &[u8; 20], sent: u32) -> Result<(u32, u32), ProtoError> {
    if be64(&b[0..8]) != OPT_REPLY_MAGIC {
        return Err(bad("bad option reply magic"));
    }
    let opt = be32(&b[8..12]);
    if opt != sent {
        return Err(bad(format!("reply to option {opt}, expected {sent}")));
    }
    let len = be32(&b[16..20]);
    if len > MAX_OPTION_REPLY {
        return Err(bad(format!("option reply of {len} bytes")));
    }
    Ok((be32(&b[12..16]), len))
}

/// NBD_REP_META_CONTEXT data: (context id, name).
pub fn parse_meta_context(data: &[u8]) -> Result<(u32, String), ProtoError> {
    if data.len() < 4 {
        return Err(bad("short meta context reply"));
    }
    let name = std::str::from_utf8(&data[4..]).map_err(|_| bad("meta context name is not UTF-8"))?;
    Ok((be32(data), name.to_string()))
}

/// What NBD_REP_INFO tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    BlockSize { minimum: u32, preferred: u32, maximum: u32 },
    Other,
}

pub fn parse_info(data: &[u8]) -> Result<Info, ProtoError> {
    if data.len() < 2 {
        return Err(bad("short info reply"));
    }
    match be16(data) {
        INFO_EXPORT if data.len() == 12 => Ok(Info::Export { size: be64(&data[2..10]), flags: be16(&data[10..12]) }),
        INFO_BLOCK_SIZE if data.len() == 14 => {
            Ok(Info::BlockSize { minimum: be32(&data[2..6]), preferred: be32(&data[6..10]), maximum: be32(&data[10..14]) })
        }
        INFO_EXPORT | INFO_BLOCK_SIZE => Err(bad("info reply of the wrong length")),
        _ => Ok(Info::Other),
    }
}

/// A transmission request.
pub fn request(cmd: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut r = [0u8; 28];
    r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    r[4..6].copy_from_slice(&flags.to_be_bytes());
    r[6..8].copy_from_slice(&cmd.to_be_bytes());
    r[8..16].copy_from_slice(&cookie.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&len.to_be_bytes());
    r
}

/// Header of a structured reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub done: bool,
    pub kind: u16,
    pub cookie: u64,
    pub len: u32,
}

/// Parses a chunk header; a simple reply (the server ignoring the
/// negotiated structured replies) is malformed here.
pub fn parse_chunk_header(b: &[u8; 20]) -> Result<ChunkHeader, ProtoError> {
    let magic = be32(&b[0..4]);
    if magic == SIMPLE_REPLY_MAGIC {
        return Err(bad("simple reply after structured replies were agreed"));
    }
    if magic != STRUCTURED_REPLY_MAGIC {
        return Err(bad(format!("bad reply magic {magic:#x}")));
    }
    let len = be32(&b[16..20]);
    if len > MAX_CHUNK {
        return Err(bad(format!("reply chunk of {len} bytes")));
    }
    Ok(ChunkHeader { done: be16(&b[4..6]) & REPLY_FLAG_DONE != 0, kind: be16(&b[6..8]), cookie: be64(&b[8..16]), len })
}

/// A server-reported error chunk: (errno, message).
pub fn parse_error_chunk(payload: &[u8]) -> Result<(u32, String), ProtoError> {
    if payload.len() < 6 {
        return Err(bad("short error chunk"));
    }
    let n = be16(&payload[4..6]) as usize;
    let msg = payload.get(6..6 + n).ok_or_else(|| bad("error message past the chunk"))?;
    Ok((be32(payload), String::from_utf8_lossy(msg).into_owned()))
}

/// Collects the chunks answering one READ of `want` and checks that they
/// cover it exactly once.
pub struct ReadReply {
    want: Range<u64>,
    /// Byte ranges covered so far, sorted and disjoint.
    covered: Vec<Range<u64>>,
}

/// What a READ's chunk asks the client to do with its buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill<'a> {
    /// Copy these bytes at this offset into the buffer.
    Data { at: usize, bytes: &'a [u8] },
    /// Zero this range of the buffer.
    Zero { at: usize, len: usize },
    Nothing,
}

impl ReadReply {
    pub fn new(offset: u64, len: u32) -> ReadReply {
        ReadReply { want: offset..offset + len as u64, covered: Vec::new() }
    }

    /// Applies one chunk (its header already checked for the cookie).
    /// `Err` for a server error or a malformed or overlapping chunk.
    pub fn chunk<'a>(&mut self, kind: u16, payload: &'a [u8]) -> Result<Fill<'a>, ReadError> {
        match kind {
            REPLY_TYPE_NONE => {
                if !payload.is_empty() {
                    return Err(bad("NONE chunk with a payload").into());
                }
                Ok(Fill::Nothing)
            }
            REPLY_TYPE_OFFSET_DATA => {
                if payload.len() < 9 {
                    return Err(bad("short data chunk").into());
                }
                let off = be64(payload);
                let bytes = &payload[8..];
                let at = self.claim(off, bytes.len() as u64)?;
                Ok(Fill::Data { at, bytes })
            }
            REPLY_TYPE_OFFSET_HOLE => {
                if payload.len() != 12 {
                    return Err(bad("hole chunk of the wrong length").into());
                }
                let len = be32(&payload[8..12]) as u64;
                if len == 0 {
                    return Err(bad("empty hole chunk").into());
                }
                let at = self.claim(be64(payload), len)?;
                Ok(Fill::Zero { at, len: len as usize })
            }
            k if k & REPLY_TYPE_ERROR_BIT != 0 => {
                let (errno, message) = parse_error_chunk(payload)?;
                Err(ReadError::Server { errno, message })
            }
            k => Err(bad(format!("unexpected chunk type {k} in a read")).into()),
        }
    }

    /// Records `off..off+len` as covered; returns its place in the buffer.
    fn claim(&mut self, off: u64, len: u64) -> Result<usize, ReadError> {
        let end = off.checked_add(len).ok_or_else(|| bad("chunk offset overflows"))?;
        if off < self.want.start || end > self.want.end {
            return Err(bad(format!("chunk {off}+{len} outside the read {:?}", self.want)).into());
        }
        let i = self.covered.partition_point(|r| r.end <= off);
        if self.covered.get(i).is_some_and(|r| r.start < end) {
            return Err(bad(format!("chunk {off}+{len} overlaps an earlier one")).into());
        }
        self.covered.insert(i, off..end);
        Ok((off - self.want.start) as usize)
    }

    /// Whether the chunks so far cover the whole read.
    pub fn complete(&self) -> bool {
        let total: u64 = self.covered.iter().map(|r| r.end - r.start).sum();
        total == self.want.end - self.want.start
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("server error {errno}: {message}")]
    Server { errno: u32, message: String },
}

/// One extent of a block status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u32,
    pub flags: u32,
}

/// NBD_REPLY_TYPE_BLOCK_STATUS payload: (context id, extents).
pub fn parse_block_status(payload: &[u8]) -> Result<(u32, Vec<Extent>), ProtoError> {
    if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
        return Err(bad(format!("block status payload of {} bytes", payload.len())));
    }
    let ctx = be32(payload);
    let mut out = Vec::with_capacity((payload.len() - 4) / 8);
    for d in payload[4..].chunks_exact(8) {
        let e = Extent { len: be32(d), flags: be32(&d[4..]) };
        if e.len == 0 {
            return Err(bad("zero-length extent"));
        }
        out.push(e);
    }
    Ok((ctx, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: deterministic noise for the parser tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn data_chunk(off: u64, bytes: &[u8]) -> Vec<u8> {
        let mut v = off.to_be_bytes().to_vec();
        v.extend_from_slice(bytes);
        v
    }

    fn hole_chunk(off: u64, len: u32) -> Vec<u8> {
        let mut v = off.to_be_bytes().to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    #[test]
    fn greeting() {
        let mut g = [0u8; 18];
        g[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        g[16..].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_greeting(&g), Ok(3));
        g[17] = 0;
        assert_eq!(parse_greeting(&g), Err(ProtoError::OldStyle));
        g[0] = 0;
        assert_eq!(parse_greeting(&g), Err(ProtoError::NotNbd));
    }

    #[test]
    fn read_reply_covers_exactly_once() {
        let mut r = ReadReply::new(1000, 100);
        let d = data_chunk(1000, &[7u8; 40]);
        assert_eq!(r.chunk(REPLY_TYPE_OFFSET_DATA, &d).unwrap(), Fill::Data { at: 0, bytes: &[7u8; 40] });
        assert!(!r.complete());
        let h = hole_chunk(1060, 40);
        assert_eq!(r.chunk(REPLY_TYPE_OFFSET_HOLE, &h).unwrap(), Fill::Zero { at: 60, len: 40 });
        // Overlapping the first chunk.
        assert!(r.chunk(REPLY_TYPE_OFFSET_DATA, &data_chunk(1030, &[1u8; 20])).is_err());
        // Past the read.
        assert!(r.chunk(REPLY_TYPE_OFFSET_HOLE, &hole_chunk(1090, 20)).is_err());
        assert!(!r.complete());
        assert!(r.chunk(REPLY_TYPE_OFFSET_DATA, &data_chunk(1040, &[2u8; 20])).is_ok());
        assert!(r.complete());
    }

    #[test]
    fn server_errors_and_unknown_chunks_are_errors() {
        let mut r = ReadReply::new(0, 10);
        let mut e = 5u32.to_be_bytes().to_vec();
        e.extend_from_slice(&3u16.to_be_bytes());
        e.extend_from_slice(b"EIO");
        assert_eq!(
            r.chunk(REPLY_TYPE_ERROR_BIT | 1, &e),
            Err(ReadError::Server { errno: 5, message: "EIO".into() })
        );
        assert!(r.chunk(REPLY_TYPE_BLOCK_STATUS, &[0u8; 12]).is_err());
        assert!(r.chunk(REPLY_TYPE_NONE, &[1]).is_err());
    }

    #[test]
    fn block_status_payloads() {
        let mut p = 7u32.to_be_bytes().to_vec();
        for (len, flags) in [(4096u32, 0u32), (8192, 3)] {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        let (ctx, ex) = parse_block_status(&p).unwrap();
        assert_eq!(ctx, 7);
        assert_eq!(ex, vec![Extent { len: 4096, flags: 0 }, Extent { len: 8192, flags: 3 }]);
        assert!(parse_block_status(&p[..p.len() - 1]).is_err());
        assert!(parse_block_status(&p[..4]).is_err());
        let mut z = p.clone();
        z[4..8].copy_from_slice(&0u32.to_be_bytes());
        assert!(parse_block_status(&z).is_err());
    }

    /// Random and mutated input: every parser answers Ok or Err, never
    /// panics, and an accepted read reply never writes outside the read.
    #[test]
    fn parsers_survive_random_input() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..20_000 {
            let n = (rng.next() % 64) as usize;
            let b = rng.bytes(n);
            let _ = parse_block_status(&b);
            let _ = parse_error_chunk(&b);
            let _ = parse_meta_context(&b);
            let _ = parse_info(&b);
            let mut h = [0u8; 20];
            h.copy_from_slice(&rng.bytes(20));
            if rng.next().is_multiple_of(2) {
                h[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            }
            let _ = parse_chunk_header(&h);
            let mut oh = [0u8; 20];
            oh.copy_from_slice(&rng.bytes(20));
            let _ = parse_option_reply_header(&oh, 7);
            let mut g = [0u8; 18];
            g.copy_from_slice(&rng.bytes(18));
            let _ = parse_greeting(&g);

            // A read of 64 bytes at 4096, answered with mutated chunks.
            let mut r = ReadReply::new(4096, 64);
            for _ in 0..4 {
                let kind = [REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, 0x8001, 9][(rng.next() % 5) as usize];
                let off = 4096 + (rng.next() % 80) - 8;
                let mut payload = match kind {
                    REPLY_TYPE_OFFSET_DATA => {
                        let n = (rng.next() % 70) as usize;
                        data_chunk(off, &rng.bytes(n))
                    }
                    REPLY_TYPE_OFFSET_HOLE => hole_chunk(off, (rng.next() % 70) as u32),
                    _ => {
                        let n = (rng.next() % 16) as usize;
                        rng.bytes(n)
                    }
                };
                if rng.next().is_multiple_of(8) && !payload.is_empty() {
                    let i = (rng.next() as usize) % payload.len();
                    payload[i] ^= 1 << (rng.next() % 8);
                }
                match r.chunk(kind, &payload) {
                    Ok(Fill::Data { at, bytes }) => assert!(at + bytes.len() <= 64),
                    Ok(Fill::Zero { at, len }) => assert!(at + len <= 64),
                    Ok(Fill::Nothing) | Err(_) => {}
                }
            }
        }
    }
}
