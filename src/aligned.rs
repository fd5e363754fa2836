//! Buffers for direct I/O (O_DIRECT), used by ingest to read sources and
//! by the pack reader to read frames ahead of a sequential reader.

/// A byte buffer whose start is aligned for direct I/O, built without
/// unsafe code: a vector over-allocated by the alignment and used from its
/// first aligned byte (moving the vector does not move its heap memory).
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub const ALIGN: usize = 4096;

    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + Self::ALIGN];
        let start = raw.as_ptr().align_offset(Self::ALIGN);
        AlignedBuf { raw, start, len }
    }

    /// Makes the buffer `len` bytes long, reallocating only to grow.
    pub fn set_len(&mut self, len: usize) {
        if self.start + len > self.raw.len() {
            *self = AlignedBuf::new(len);
        } else {
            self.len = len;
        }
    }

    /// The longest this buffer can be made without reallocating.
    pub fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}
