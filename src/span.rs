//! Offset maths for reads of a disk image stored in fixed-size blocks: the
//! one place that splits a byte range into per-block pieces, clipped to the
//! end of the disk.

/// One piece of a read: bytes `in_block .. in_block + len` of block `block`
/// go to `buf_offset .. buf_offset + len` of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub block: u64,
    pub in_block: usize,
    pub len: usize,
    pub buf_offset: usize,
}

/// Splits a read of `len` bytes at `offset` of a disk of `disk_size` bytes
/// into block pieces. Reads past the end are clipped; a read starting at or
/// past the end yields nothing.
pub fn pieces(offset: u64, len: usize, disk_size: u64, block_size: u32) -> Vec<Piece> {
    let bs = block_size as u64;
    let end = offset.saturating_add(len as u64).min(disk_size);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let block = pos / bs;
        let in_block = pos % bs;
        let n = (bs - in_block).min(end - pos);
        out.push(Piece {
            block,
            in_block: in_block as usize,
            len: n as usize,
            buf_offset: (pos - offset) as usize,
        });
        pos += n;
    }
    out
}

/// Number of blocks of a disk of `size` bytes (the last may be partial).
pub fn block_count(size: u64, block_size: u32) -> u64 {
    size.div_ceil(block_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_read() {
        let p = pieces(0, 8192, 1 << 20, 4096);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], Piece { block: 0, in_block: 0, len: 4096, buf_offset: 0 });
        assert_eq!(p[1], Piece { block: 1, in_block: 0, len: 4096, buf_offset: 4096 });
    }

    #[test]
    fn partial_first_and_last_block() {
        let p = pieces(4000, 5000, 1 << 20, 4096);
        assert_eq!(
            p,
            vec![
                Piece { block: 0, in_block: 4000, len: 96, buf_offset: 0 },
                Piece { block: 1, in_block: 0, len: 4096, buf_offset: 96 },
                Piece { block: 2, in_block: 0, len: 808, buf_offset: 4192 },
            ]
        );
    }

    #[test]
    fn clipped_at_end_of_disk() {
        // Disk of 10000 bytes: last block (2) holds 1808 bytes.
        let p = pieces(8000, 65536, 10000, 4096);
        assert_eq!(
            p,
            vec![
                Piece { block: 1, in_block: 3904, len: 192, buf_offset: 0 },
                Piece { block: 2, in_block: 0, len: 1808, buf_offset: 192 },
            ]
        );
        assert!(pieces(10000, 10, 10000, 4096).is_empty());
        assert!(pieces(20000, 10, 10000, 4096).is_empty());
        assert!(pieces(u64::MAX - 1, usize::MAX, 10000, 4096).is_empty());
    }

    #[test]
    fn empty_disk_and_empty_read() {
        assert!(pieces(0, 4096, 0, 4096).is_empty());
        assert!(pieces(100, 0, 10000, 4096).is_empty());
        assert_eq!(block_count(0, 4096), 0);
        assert_eq!(block_count(1, 4096), 1);
        assert_eq!(block_count(4096, 4096), 1);
        assert_eq!(block_count(4097, 4096), 2);
    }

    #[test]
    fn pieces_tile_the_clipped_range_exactly() {
        for bs in [4096u32, 65536] {
            for &(off, len, size) in
                &[(0u64, 1usize, 1u64), (1, 200_000, 150_001), (65535, 2, 65537), (12345, 99999, 1 << 20)]
            {
                let p = pieces(off, len, size, bs);
                let want = (off + len as u64).min(size).saturating_sub(off);
                assert_eq!(p.iter().map(|x| x.len as u64).sum::<u64>(), want);
                let mut expect_buf = 0;
                for x in &p {
                    assert_eq!(x.buf_offset, expect_buf);
                    assert!(x.in_block + x.len <= bs as usize);
                    assert_eq!(x.block * bs as u64 + x.in_block as u64, off + x.buf_offset as u64);
                    expect_buf += x.len;
                }
            }
        }
    }
}
