//! Partition tables of arbitrary disks: no panic, and every partition
//! found lies on the disk. The input is the disk; its last 8 bytes, when
//! present, also stretch the disk's claimed size (reads past the input
//! return zeros), so headers at "the last sector" are reached too.
#![no_main]

use cbtfs::partition::{MAX_NUMBER, read_table};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let size = match data.len().checked_sub(8) {
        Some(at) => {
            let extra = u64::from_le_bytes(data[at..].try_into().unwrap()) % (1 << 40);
            data.len() as u64 + extra
        }
        None => data.len() as u64,
    };
    let read = |off: u64, len: usize| -> Result<Vec<u8>, ()> {
        assert!(off < size || off == 0, "read at {off} past the disk ({size} bytes)");
        let end = off.saturating_add(len as u64).min(size);
        let mut out = vec![0u8; (end - off) as usize];
        if (off as usize) < data.len() {
            let have = &data[off as usize..(end as usize).min(data.len())];
            out[..have.len()].copy_from_slice(have);
        }
        Ok(out)
    };
    let t = read_table(size, read).unwrap();
    for p in &t.partitions {
        assert!(p.len > 0 && p.start.checked_add(p.len).is_some_and(|e| e <= size), "{p:?} off the disk");
        assert!((1..=MAX_NUMBER).contains(&p.number));
    }
});
