//! Pure codec of one block frame: no I/O. See `format.rs` for the layout.

use xxhash_rust::xxh3::Xxh3;

use crate::format::{CODEC_LZ4, CODEC_RAW, FRAME_HEADER_LEN, FRAME_MAGIC};
use crate::ids::Digest;

const _: () = assert!(FRAME_HEADER_LEN == 32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame header is damaged (bad magic)")]
    BadMagic,
    #[error("frame header is damaged (unknown codec {0})")]
    BadCodec(u8),
    #[error("frame lengths {found_raw}/{found_stored} differ from the index ({want_raw}/{want_stored})")]
    LengthMismatch { found_raw: u32, found_stored: u32, want_raw: u32, want_stored: u32 },
    #[error("checksum mismatch")]
    Checksum,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("content does not match its digest")]
    DigestMismatch,
    #[error("frame holds another block than the index says (digest prefix differs)")]
    WrongBlock,
}

/// An encoded frame: header followed by payload.
pub struct EncodedFrame {
    pub bytes: Vec<u8>,
    pub raw_len: u32,
    pub stored_len: u32,
}

/// Compresses `raw` with lz4 (kept raw when that does not save space) and
/// builds its frame.
///
/// Every block is compressed whole, with no trial on a sample first: lz4
/// gives up quickly on data it cannot shrink (it strides faster the longer
/// it finds no match), 6 us for a 64 KiB block of random bytes, while
/// compressible text takes 118 us. An 8 KiB trial cost text blocks 15 us
/// more and saved random blocks 4 us, a net loss on a disk of both.
pub fn encode(raw: &[u8], digest: &Digest) -> EncodedFrame {
    let compressed = lz4_flex::block::compress(raw);
    let (codec, payload): (u8, &[u8]) = if compressed.len() < raw.len() {
        (CODEC_LZ4, &compressed)
    } else {
        (CODEC_RAW, raw)
    };
    let mut bytes = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    bytes.extend_from_slice(&FRAME_MAGIC);
    bytes.push(codec);
    bytes.extend_from_slice(&[0u8; 3]);
    bytes.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&[0u8; 8]); // checksum, filled below
    bytes.extend_from_slice(&digest.prefix());
    bytes.extend_from_slice(payload);
    let sum = checksum(&bytes[..FRAME_HEADER_LEN], &bytes[FRAME_HEADER_LEN..]);
    bytes[16..24].copy_from_slice(&sum.to_le_bytes());
    EncodedFrame { raw_len: raw.len() as u32, stored_len: payload.len() as u32, bytes }
}

/// xxh3-64 over the header (without its checksum field) and the payload, so
/// that damage to lengths or codec is caught as well as damage to data.
fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&header[..16]);
    h.update(&header[24..FRAME_HEADER_LEN]);
    h.update(payload);
    h.digest()
}

/// Checks and decodes a frame read from a pack. `want_raw`, `want_stored`
/// and `digest` come from the index; a frame that disagrees is damaged.
/// The digest prefix check catches an intact frame of another block (a
/// pack file swapped or restored from elsewhere), which the checksum alone
/// cannot: without it, such a read would return wrong bytes.
pub fn decode(frame: &[u8], want_raw: u32, want_stored: u32, digest: &Digest) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; want_raw as usize];
    decode_into(frame, want_raw, want_stored, digest, &mut out)?;
    Ok(out)
}

/// [`decode`] into `out`, which must be `want_raw` bytes long: a read
/// decompresses straight into its reply, over whatever the reply buffer
/// held before: zeroing it first, only to overwrite every byte, was work
/// done again for every block. On error `out` holds no block, possibly
/// part of one.
pub fn decode_into(
    frame: &[u8],
    want_raw: u32,
    want_stored: u32,
    digest: &Digest,
    out: &mut [u8],
) -> Result<(), FrameError> {
    assert_eq!(out.len(), want_raw as usize, "decode_into wants room for exactly the block");
    if frame.len() < FRAME_HEADER_LEN || frame[..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let (header, payload) = frame.split_at(FRAME_HEADER_LEN);
    let codec = header[4];
    let raw_len = u32::from_le_bytes(header[8..12].try_into().unwrap());
    let stored_len = u32::from_le_bytes(header[12..16].try_into().unwrap());
    if raw_len != want_raw || stored_len != want_stored || payload.len() != stored_len as usize {
        return Err(FrameError::LengthMismatch {
            found_raw: raw_len,
            found_stored: stored_len,
            want_raw,
            want_stored,
        });
    }
    let sum = u64::from_le_bytes(header[16..24].try_into().unwrap());
    if checksum(header, payload) != sum {
        return Err(FrameError::Checksum);
    }
    if header[24..32] != digest.prefix() {
        return Err(FrameError::WrongBlock);
    }
    match codec {
        // Lengths checked above: the payload is the block.
        CODEC_RAW if payload.len() == out.len() => {
            out.copy_from_slice(payload);
            Ok(())
        }
        // A stored block's payload is the block: a length that differs
        // from the block's is damage, checksum or not.
        CODEC_RAW => Err(FrameError::LengthMismatch { found_raw: raw_len, found_stored: stored_len, want_raw, want_stored }),
        CODEC_LZ4 => match lz4_flex::block::decompress_into(payload, out) {
            Ok(n) if n == raw_len as usize => Ok(()),
            Ok(n) => Err(FrameError::Decompress(format!("{n} bytes instead of {raw_len}"))),
            Err(e) => Err(FrameError::Decompress(e.to_string())),
        },
        other => Err(FrameError::BadCodec(other)),
    }
}

/// Full check used by `verify`: decode, then compare the content's BLAKE3
/// digest with the block's identity.
pub fn decode_and_verify(
    frame: &[u8],
    want_raw: u32,
    want_stored: u32,
    digest: &Digest,
) -> Result<Vec<u8>, FrameError> {
    let raw = decode(frame, want_raw, want_stored, digest)?;
    if Digest::of(&raw) != *digest {
        return Err(FrameError::DigestMismatch);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(compressible: bool) -> Vec<u8> {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        (0..65536)
            .map(|i| {
                if compressible {
                    (i % 7) as u8
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trip_compressible_and_not() {
        for c in [true, false] {
            let raw = sample(c);
            let d = Digest::of(&raw);
            let f = encode(&raw, &d);
            assert_eq!(f.bytes.len(), FRAME_HEADER_LEN + f.stored_len as usize);
            if c {
                assert!(f.stored_len < 4096, "compressible data should shrink");
            } else {
                assert_eq!(f.stored_len, f.raw_len, "incompressible data is stored raw");
            }
            let back = decode_and_verify(&f.bytes, f.raw_len, f.stored_len, &d).unwrap();
            assert_eq!(back, raw);
        }
    }

    #[test]
    fn decode_into_writes_over_what_the_buffer_held() {
        // A reused reply buffer holds the previous read's bytes: every one
        // must be replaced, whichever codec the frame uses.
        for c in [true, false] {
            let raw = sample(c);
            let d = Digest::of(&raw);
            let f = encode(&raw, &d);
            let mut out = vec![0xa5u8; raw.len()];
            decode_into(&f.bytes, f.raw_len, f.stored_len, &d, &mut out).unwrap();
            assert_eq!(out, raw, "compressible={c}");
            // A damaged frame is an error, not a partly written block.
            let mut bad = f.bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(decode_into(&bad, f.raw_len, f.stored_len, &d, &mut out), Err(FrameError::Checksum));
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        for c in [true, false] {
            let raw = sample(c);
            let d = Digest::of(&raw);
            let f = encode(&raw, &d);
            // Every byte of a small frame, and a sample of a large one.
            let step = if f.bytes.len() > 8192 { 97 } else { 1 };
            for i in (0..f.bytes.len()).step_by(step) {
                let mut bad = f.bytes.clone();
                bad[i] ^= 0x40;
                assert!(
                    decode(&bad, f.raw_len, f.stored_len, &d).is_err(),
                    "flip at byte {i} went unnoticed (compressible={c})"
                );
            }
        }
    }

    #[test]
    fn codec_is_chosen_by_what_the_whole_block_saves() {
        // Random: stored raw.
        let raw = sample(false);
        let d = Digest::of(&raw);
        let f = encode(&raw, &d);
        assert_eq!(f.bytes[4], CODEC_RAW);
        assert_eq!(f.stored_len, f.raw_len);
        assert_eq!(decode_and_verify(&f.bytes, f.raw_len, f.stored_len, &d).unwrap(), raw);
        // Random with a compressible head: the head's saving is kept.
        let mut raw = sample(false);
        raw[..8192].fill(0);
        let d = Digest::of(&raw);
        let f = encode(&raw, &d);
        assert_eq!(f.bytes[4], CODEC_LZ4);
        assert!(f.stored_len < f.raw_len - 7000, "{} of {}", f.stored_len, f.raw_len);
        assert_eq!(decode_and_verify(&f.bytes, f.raw_len, f.stored_len, &d).unwrap(), raw);
    }

    #[test]
    fn index_disagreement_is_damage() {
        let raw = sample(true);
        let d = Digest::of(&raw);
        let f = encode(&raw, &d);
        assert!(matches!(
            decode(&f.bytes, f.raw_len + 1, f.stored_len, &d),
            Err(FrameError::LengthMismatch { .. })
        ));
        assert!(decode(&f.bytes[..f.bytes.len() - 1], f.raw_len, f.stored_len, &d).is_err());
        assert_eq!(decode(&[], 1, 1, &d), Err(FrameError::BadMagic));
    }

    /// A raw frame whose stored length differs from its block's, with a
    /// checksum to match (a writer's bug, or made on purpose): damage, not
    /// a panic in the thread serving the read.
    #[test]
    fn raw_frame_of_another_length_is_damage() {
        let raw = sample(false);
        let d = Digest::of(&raw);
        let f = encode(&raw, &d);
        assert_eq!(f.bytes[4], CODEC_RAW);
        let mut bytes = f.bytes[..f.bytes.len() - 1].to_vec();
        let stored = f.stored_len - 1;
        bytes[12..16].copy_from_slice(&stored.to_le_bytes());
        let sum = checksum(&bytes[..FRAME_HEADER_LEN], &bytes[FRAME_HEADER_LEN..]);
        bytes[16..24].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(decode(&bytes, f.raw_len, stored, &d), Err(FrameError::LengthMismatch { .. })));
    }

    #[test]
    fn frame_of_another_block_is_refused_on_every_read() {
        let raw = sample(true);
        let f = encode(&raw, &Digest::of(&raw));
        let other = Digest::of(b"other");
        assert_eq!(decode(&f.bytes, f.raw_len, f.stored_len, &other), Err(FrameError::WrongBlock));
        assert_eq!(decode_and_verify(&f.bytes, f.raw_len, f.stored_len, &other), Err(FrameError::WrongBlock));
    }

    #[test]
    fn verify_catches_content_not_matching_the_digest() {
        // Same prefix, different digest: only the full BLAKE3 check sees it.
        let raw = sample(true);
        let d = Digest::of(&raw);
        let f = encode(&raw, &d);
        let mut forged = d;
        forged.0[31] ^= 1;
        assert!(decode(&f.bytes, f.raw_len, f.stored_len, &forged).is_ok());
        assert_eq!(decode_and_verify(&f.bytes, f.raw_len, f.stored_len, &forged), Err(FrameError::DigestMismatch));
    }
}
