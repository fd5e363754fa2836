//! Partition tables of a disk image (MBR with logical partitions, and GPT),
//! so that a mount can show each partition as a file of its own and a user
//! can loop-mount it without `losetup -P`.
//!
//! Pure parsing over a read function: no I/O of its own, no panics on any
//! input (a fuzz target feeds it random disks). A table that does not hold
//! together yields no partitions and a reason, never a partition outside
//! the disk. Numbering follows Linux, so `sda-part5.img` is what the
//! restored machine called `/dev/sda5`: MBR primaries 1-4, logical
//! partitions from 5 in chain order (and on through any further extended
//! entry's chain), counted as Linux counts them; GPT entry index + 1. MBR
//! tables are read with 512-byte sectors (what virtual disks use); GPT
//! with 512- or 4096-byte sectors, whichever holds a valid header.

use std::collections::HashSet;

/// MBR sectors are 512 bytes; GPT is looked for at 512 and 4096.
const MBR_SECTOR: u64 = 512;
const GPT_SECTOR_SIZES: [u64; 2] = [512, 4096];
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MBR_ENTRIES_AT: usize = 446;
/// Partition type of the protective MBR entry that announces a GPT.
const MBR_TYPE_GPT: u8 = 0xEE;
/// Types of an extended partition, whose chain of boot records holds the
/// logical partitions.
const MBR_TYPES_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// Boot records of one chain of logical partitions followed at most: more
/// than partition numbers go (see [`MAX_NUMBER`]); a loop or an endless
/// chain in a damaged table stops here.
const MAX_LOGICAL: usize = 256;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_HEADER_MIN: usize = 92;
/// A GPT entry array larger than this is taken for damage (the standard
/// minimum is 16 KiB; tools write 128 entries of 128 bytes).
const GPT_ENTRIES_MAX_BYTES: u64 = 1 << 20;
/// Partition numbers are one byte in inode numbers (see `fuse::inode`).
pub const MAX_NUMBER: u32 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
}

/// One partition: its number and its byte range on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

/// What a disk's first sectors say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub scheme: Option<Scheme>,
    pub partitions: Vec<Partition>,
    /// Why entries (or the whole table) were ignored; empty when all is well.
    pub problems: Vec<String>,
}

/// Reads the partition table of a disk of `size` bytes. `read(offset, len)`
/// returns up to `len` bytes (fewer only at the end of the disk). Read
/// errors are passed on; a damaged or absent table is not an error.
pub fn read_table<E>(size: u64, mut read: impl FnMut(u64, usize) -> Result<Vec<u8>, E>) -> Result<Table, E> {
    let mut t = Table::default();
    let mbr = read(0, MBR_SECTOR as usize)?;
    let Some(entries) = mbr_entries(&mbr) else { return Ok(t) };
    if entries.iter().any(|e| e.kind == MBR_TYPE_GPT) {
        t.scheme = Some(Scheme::Gpt);
        gpt(size, &mut read, &mut t)?;
    } else {
        t.scheme = Some(Scheme::Mbr);
        mbr_partitions(size, &entries, &mut read, &mut t)?;
    }
    t.partitions.sort_by_key(|p| p.number);
    Ok(t)
}

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    kind: u8,
    start_lba: u32,
    sectors: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The four entries of the disk's first sector, or `None` if it holds no
/// partition table. The 0x55AA signature alone also ends a FAT or NTFS boot
/// sector of an unpartitioned disk, so, as Linux does, entries must have a
/// boot flag of 0 or 0x80 (in the first sector only: Linux does not look
/// at the flags of the boot records of logical partitions).
fn mbr_entries(sector: &[u8]) -> Option<[MbrEntry; 4]> {
    let entries = boot_record_entries(sector)?;
    (0..4).all(|i| matches!(sector[MBR_ENTRIES_AT + 16 * i], 0 | 0x80)).then_some(entries)
}

/// The four entries of a boot record, or `None` without its signature.
fn boot_record_entries(sector: &[u8]) -> Option<[MbrEntry; 4]> {
    if sector.len() < MBR_SECTOR as usize || sector[510..512] != MBR_SIGNATURE {
        return None;
    }
    Some(std::array::from_fn(|i| {
        let at = MBR_ENTRIES_AT + 16 * i;
        MbrEntry { kind: sector[at + 4], start_lba: le32(sector, at + 8), sectors: le32(sector, at + 12) }
    }))
}

/// Adds a partition after checking that it lies on the disk. One that
/// runs past the end is cut there, as Linux does (a disk image that was
/// shrunk, or copied short): its filesystem may still be readable, and
/// it is often the one with the data.
fn push(t: &mut Table, size: u64, number: u32, start: u64, len: u64) {
    if number > MAX_NUMBER {
        t.problems.push(format!("partition {number} ignored: more than {MAX_NUMBER} partitions"));
    } else if len == 0 {
        // Nothing to show.
    } else if start >= size {
        t.problems.push(format!("partition {number} ignored: it starts at byte {start}, past the end of the disk ({size} bytes)"));
    } else if start.checked_add(len).is_none_or(|end| end > size) {
        t.problems.push(format!(
            "partition {number} runs past the end of the disk ({size} bytes); shown cut to {} bytes",
            size - start
        ));
        t.partitions.push(Partition { number, start, len: size - start });
    } else {
        t.partitions.push(Partition { number, start, len });
    }
}

fn mbr_partitions<E>(
    size: u64,
    entries: &[MbrEntry; 4],
    read: &mut impl FnMut(u64, usize) -> Result<Vec<u8>, E>,
    t: &mut Table,
) -> Result<(), E> {
    // As Linux reads the table (block/partitions/msdos.c): every entry with
    // a size counts, whatever its type; an extended one shows no
    // filesystem itself, only the logical partitions of its chain, which
    // are numbered from 5 across all chains in slot order.
    let mut number = 5u32;
    for (i, e) in entries.iter().enumerate() {
        if e.sectors == 0 {
            continue;
        }
        if MBR_TYPES_EXTENDED.contains(&e.kind) {
            logical_partitions(size, e, &mut number, read, t)?;
        } else {
            push(t, size, i as u32 + 1, e.start_lba as u64 * MBR_SECTOR, e.sectors as u64 * MBR_SECTOR);
        }
    }
    Ok(())
}

/// The logical partitions in the chain of boot records of the extended
/// partition `ext`, numbered from `number` on. Each record holds logical
/// partitions (normally one, in its first slot) relative to itself, and a
/// link to the next record relative to the start of `ext`. As in Linux,
/// entries with a size count whatever their type, only the first sector
/// is held to boot flags of 0 or 0x80, and the third and fourth slots
/// (where old tools left garbage) count only if they lie inside both the
/// record's extent and `ext`.
fn logical_partitions<E>(
    size: u64,
    ext: &MbrEntry,
    number: &mut u32,
    read: &mut impl FnMut(u64, usize) -> Result<Vec<u8>, E>,
    t: &mut Table,
) -> Result<(), E> {
    let (first, first_len) = (ext.start_lba as u64, ext.sectors as u64);
    let (mut this, mut this_len) = (first, first_len);
    let mut seen = HashSet::new();
    loop {
        if seen.len() == MAX_LOGICAL {
            t.problems.push(format!("logical partitions: more than {MAX_LOGICAL} boot records; the rest are ignored"));
            return Ok(());
        }
        if !seen.insert(this) {
            t.problems.push(format!("logical partitions: boot record at sector {this} links back to an earlier one"));
            return Ok(());
        }
        let at = this * MBR_SECTOR;
        if at >= size {
            t.problems.push(format!("logical partitions: boot record at sector {this} lies past the end of the disk"));
            return Ok(());
        }
        let Some(entries) = boot_record_entries(&read(at, MBR_SECTOR as usize)?) else {
            t.problems.push(format!("logical partitions: no valid boot record at sector {this}"));
            return Ok(());
        };
        for (i, e) in entries.iter().enumerate() {
            if e.sectors == 0 || MBR_TYPES_EXTENDED.contains(&e.kind) {
                continue;
            }
            let (offs, len) = (e.start_lba as u64, e.sectors as u64);
            if i >= 2 && (offs + len > this_len || this + offs + len > first + first_len) {
                continue;
            }
            push(t, size, *number, (this + offs) * MBR_SECTOR, len * MBR_SECTOR);
            *number += 1;
        }
        match entries.iter().find(|e| e.sectors != 0 && MBR_TYPES_EXTENDED.contains(&e.kind)) {
            Some(n) => (this, this_len) = (first + n.start_lba as u64, n.sectors as u64),
            None => return Ok(()),
        }
    }
}

/// GPT: the primary header (at LBA 1), or the backup (at the last LBA) if
/// the primary or its entries fail their CRC. Tried for 512-byte sectors,
/// then 4096-byte ones.
fn gpt<E>(size: u64, read: &mut impl FnMut(u64, usize) -> Result<Vec<u8>, E>, t: &mut Table) -> Result<(), E> {
    let mut why = Vec::new();
    for ss in GPT_SECTOR_SIZES {
        if size < ss * 3 {
            continue;
        }
        let last_lba = size / ss - 1;
        for (what, lba) in [("primary", 1), ("backup", last_lba)] {
            match gpt_at(size, ss, lba, read)? {
                Ok(parts) => {
                    if what == "backup" {
                        t.problems.push("the primary GPT header is damaged; its backup was used".into());
                    }
                    for (n, start, len) in parts {
                        push(t, size, n, start, len);
                    }
                    return Ok(());
                }
                Err(e) => why.push(format!("{what} GPT ({ss}-byte sectors): {e}")),
            }
        }
    }
    t.problems.push(format!("the disk has a protective MBR but no valid GPT: {}", why.join("; ")));
    Ok(())
}

/// The partitions of the GPT header at `lba`, as (number, start, length),
/// or why that header is not valid.
#[allow(clippy::type_complexity)]
fn gpt_at<E>(
    size: u64,
    ss: u64,
    lba: u64,
    read: &mut impl FnMut(u64, usize) -> Result<Vec<u8>, E>,
) -> Result<Result<Vec<(u32, u64, u64)>, String>, E> {
    let h = read(lba * ss, ss as usize)?;
    if h.len() < GPT_HEADER_MIN || &h[..8] != GPT_SIGNATURE {
        return Ok(Err("no header signature".into()));
    }
    let header_size = le32(&h, 12) as usize;
    if !(GPT_HEADER_MIN..=h.len()).contains(&header_size) {
        return Ok(Err(format!("header size {header_size} is not valid")));
    }
    let mut copy = h[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le32(&h, 16) {
        return Ok(Err("header checksum mismatch".into()));
    }
    if le64(&h, 24) != lba {
        return Ok(Err(format!("header says it is at sector {}, not {lba}", le64(&h, 24))));
    }
    let (entries_lba, count, entry_size) = (le64(&h, 72), le32(&h, 80) as u64, le32(&h, 84) as u64);
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Ok(Err(format!("entry size {entry_size} is not valid")));
    }
    let bytes = count * entry_size;
    if bytes > GPT_ENTRIES_MAX_BYTES {
        return Ok(Err(format!("{count} entries of {entry_size} bytes are too many")));
    }
    let at = entries_lba.checked_mul(ss).filter(|&a| a.checked_add(bytes).is_some_and(|end| end <= size));
    let Some(at) = at else { return Ok(Err("entries lie past the end of the disk".into())) };
    let entries = read(at, bytes as usize)?;
    if entries.len() as u64 != bytes || crc32fast::hash(&entries) != le32(&h, 88) {
        return Ok(Err("entries checksum mismatch".into()));
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let number = i as u32 + 1;
        if last < first {
            out.push((number, 0, 0));
            continue;
        }
        match (first.checked_mul(ss), (last - first).checked_add(1).and_then(|n| n.checked_mul(ss))) {
            (Some(start), Some(len)) => out.push((number, start, len)),
            _ => out.push((number, u64::MAX, u64::MAX)),
        }
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_reader(d: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>, ()> + '_ {
        move |off, len| {
            let s = (off as usize).min(d.len());
            let e = s.saturating_add(len).min(d.len());
            Ok(d[s..e].to_vec())
        }
    }

    fn mbr_entry(d: &mut [u8], sector_at: usize, i: usize, kind: u8, start: u32, sectors: u32) {
        let at = sector_at + MBR_ENTRIES_AT + 16 * i;
        d[at + 4] = kind;
        d[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        d[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        d[sector_at + 510..sector_at + 512].copy_from_slice(&MBR_SIGNATURE);
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn mbr_primaries_and_logicals() {
        let mut d = vec![0u8; 64 * MIB];
        mbr_entry(&mut d, 0, 0, 0x83, 2048, 8192); // 1: 1 MiB..5 MiB
        mbr_entry(&mut d, 0, 1, 0x05, 20480, 40960); // 2: extended 10..30 MiB
        mbr_entry(&mut d, 0, 3, 0x0c, 81920, 2048); // 4: 40..41 MiB
        // First EBR at 10 MiB: logical 5 at +2048 sectors, next EBR at +20480.
        mbr_entry(&mut d, 20480 * 512, 0, 0x83, 2048, 4096);
        mbr_entry(&mut d, 20480 * 512, 1, 0x05, 20480, 4096);
        // Second EBR at 20 MiB: logical 6, end of chain.
        mbr_entry(&mut d, 40960 * 512, 0, 0x07, 2048, 2048);
        let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
        assert_eq!(t.scheme, Some(Scheme::Mbr));
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let want = [
            (1, MIB, 4 * MIB),
            (4, 40 * MIB, MIB),
            (5, 11 * MIB, 2 * MIB),
            (6, 21 * MIB, MIB),
        ];
        let got: Vec<(u32, usize, usize)> =
            t.partitions.iter().map(|p| (p.number, p.start as usize, p.len as usize)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn mbr_chain_loop_and_past_end_are_reported() {
        let mut d = vec![0u8; 16 * MIB];
        mbr_entry(&mut d, 0, 0, 0x83, 2048, 1 << 30); // past the end: cut
        mbr_entry(&mut d, 0, 2, 0x83, 1 << 20, 64); // starts past the end: ignored
        mbr_entry(&mut d, 0, 1, 0x0f, 4096, 8192);
        mbr_entry(&mut d, 4096 * 512, 0, 0x83, 64, 64);
        mbr_entry(&mut d, 4096 * 512, 1, 0x05, 0x100, 64);
        mbr_entry(&mut d, (4096 + 0x100) * 512, 0, 0x83, 64, 64);
        mbr_entry(&mut d, (4096 + 0x100) * 512, 1, 0x05, 0x100, 64); // links to itself
        let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
        let got: Vec<(u32, u64)> = t.partitions.iter().map(|p| (p.number, p.len)).collect();
        assert_eq!(got, [(1, 16 * MIB as u64 - 2048 * 512), (5, 64 * 512), (6, 64 * 512)]);
        // In slot order, as Linux reads them: the extended entry's chain
        // comes before slot 3.
        assert_eq!(t.problems.len(), 3, "{:?}", t.problems);
        assert!(t.problems[0].contains("partition 1 runs past the end"), "{:?}", t.problems);
        assert!(t.problems[1].contains("links back"), "{:?}", t.problems);
        assert!(t.problems[2].contains("partition 3 ignored"), "{:?}", t.problems);
    }

    /// Tables as some tools leave them, numbered as Linux numbers them (the
    /// disk below gives the same numbers and starts in `partx --show`): a
    /// logical entry of type 0 with a size counts; garbage in a boot
    /// record's third slot does not, nor does its boot flag matter; a
    /// second extended entry's chain continues the numbering.
    #[test]
    fn mbr_logicals_numbered_as_linux_numbers_them() {
        let mut d = vec![0u8; 64 * MIB];
        mbr_entry(&mut d, 0, 0, 0x83, 2048, 2048); // 1
        mbr_entry(&mut d, 0, 1, 0x05, 8192, 16384); // extended: 4..12 MiB
        mbr_entry(&mut d, 0, 2, 0x0f, 32768, 16384); // extended: 16..24 MiB
        let ebr1 = 8192 * 512;
        mbr_entry(&mut d, ebr1, 0, 0x00, 63, 1000); // 5: type 0, but sized
        mbr_entry(&mut d, ebr1, 1, 0x05, 4096, 8192); // next record at 6 MiB
        mbr_entry(&mut d, ebr1, 2, 0x83, 0x7fff_ffff, 10); // garbage, outside
        d[ebr1 + MBR_ENTRIES_AT + 48] = 0x37; // a boot flag no tool writes
        mbr_entry(&mut d, (8192 + 4096) * 512, 0, 0x83, 2048, 2048); // 6
        mbr_entry(&mut d, 32768 * 512, 0, 0x07, 2048, 4096); // 7
        let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
        let got: Vec<(u32, u64, u64)> = t.partitions.iter().map(|p| (p.number, p.start / 512, p.len / 512)).collect();
        assert_eq!(got, [(1, 2048, 2048), (5, 8192 + 63, 1000), (6, 8192 + 4096 + 2048, 2048), (7, 32768 + 2048, 4096)]);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        // What util-linux's reader of the table (as Linux's) says, but for
        // the two extended entries, which hold no filesystem.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, &d).unwrap();
        let out = std::process::Command::new("partx")
            .args(["--raw", "--noheadings", "--output", "NR,START,SECTORS"])
            .arg(&img)
            .output()
            .expect("partx (util-linux)");
        let linux: Vec<(u32, u64, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
                (f[0] as u32, f[1], f[2])
            })
            .filter(|&(n, _, _)| n != 2 && n != 3)
            .collect();
        assert_eq!(got, linux);
    }

    #[test]
    fn no_table_on_blank_disk_or_filesystem_boot_sector() {
        let d = vec![0u8; MIB];
        assert_eq!(read_table(d.len() as u64, disk_reader(&d)).unwrap(), Table::default());
        // A FAT boot sector: 0x55AA, but the "entries" are boot code.
        let mut fat = vec![0u8; MIB];
        for (i, b) in fat[..510].iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        fat[510..512].copy_from_slice(&MBR_SIGNATURE);
        assert_eq!(read_table(fat.len() as u64, disk_reader(&fat)).unwrap().scheme, None);
        // A disk shorter than a sector.
        assert_eq!(read_table(100, disk_reader(&[0u8; 100])).unwrap(), Table::default());
    }

    /// Writes a GPT header at `lba` whose entries are at `entries_lba`.
    fn gpt_header(d: &mut [u8], ss: usize, lba: u64, entries_lba: u64, entries: &[u8]) {
        let at = lba as usize * ss;
        let h = &mut d[at..at + 92];
        h[..8].copy_from_slice(GPT_SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&((entries.len() / 128) as u32).to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(entries).to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        let e = entries_lba as usize * ss;
        d[e..e + entries.len()].copy_from_slice(entries);
    }

    fn gpt_disk(ss: usize) -> Vec<u8> {
        let mut d = vec![0u8; 32 * MIB];
        mbr_entry(&mut d, 0, 0, MBR_TYPE_GPT, 1, u32::MAX);
        let mut entries = vec![0u8; 128 * 128];
        let sectors = |mib: usize| (mib * MIB / ss) as u64;
        for (i, first, last) in [(0usize, sectors(1), sectors(9) - 1), (2, sectors(9), sectors(30) - 1)] {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].fill(0xAB);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let last_lba = (d.len() / ss - 1) as u64;
        gpt_header(&mut d, ss, 1, 2, &entries);
        gpt_header(&mut d, ss, last_lba, last_lba - 32, &entries);
        d
    }

    #[test]
    fn gpt_primary_backup_and_sector_sizes() {
        for ss in [512, 4096] {
            let mut d = gpt_disk(ss);
            let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
            assert_eq!(t.scheme, Some(Scheme::Gpt));
            assert!(t.problems.is_empty(), "{:?}", t.problems);
            let want = vec![
                Partition { number: 1, start: MIB as u64, len: 8 * MIB as u64 },
                Partition { number: 3, start: 9 * MIB as u64, len: 21 * MIB as u64 },
            ];
            assert_eq!(t.partitions, want, "{ss}-byte sectors");
            // Damage the primary header: the backup still gives the table.
            d[ss + 40] ^= 1;
            let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
            assert_eq!(t.partitions, want);
            assert!(t.problems[0].contains("backup"), "{:?}", t.problems);
            // Damage the backup's entries too: no partitions, and a reason.
            let last = d.len() - ss;
            d[last - 32 * ss + 40] ^= 1;
            let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
            assert!(t.partitions.is_empty());
            assert!(t.problems[0].contains("no valid GPT"), "{:?}", t.problems);
        }
    }

    #[test]
    fn gpt_entry_past_end_is_ignored() {
        let mut d = gpt_disk(512);
        let mut entries = d[1024..1024 + 128 * 128].to_vec();
        entries[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        entries[40..48].copy_from_slice(&((1u64 << 40) + 10).to_le_bytes());
        gpt_header(&mut d, 512, 1, 2, &entries);
        let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
        let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [3]);
        assert_eq!(t.problems.len(), 1, "the primary header is used: {:?}", t.problems);
        assert!(t.problems[0].contains("partition 1 ignored"), "{:?}", t.problems);
    }

    /// Tiny disks partitioned by sfdisk, committed as the fuzz seeds:
    /// what a real tool writes, against the layout sfdisk reported.
    #[test]
    fn sfdisk_made_tables() {
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/partition_table/");
        let mbr = std::fs::read(format!("{seeds}mbr-logical.raw")).unwrap();
        let t = read_table(mbr.len() as u64, disk_reader(&mbr)).unwrap();
        assert_eq!(t.scheme, Some(Scheme::Mbr));
        let got: Vec<(u32, u64, u64)> = t.partitions.iter().map(|p| (p.number, p.start / 512, p.len / 512)).collect();
        assert_eq!(got, [(1, 2, 4), (5, 10, 4), (6, 16, 4)], "{:?}", t.problems);
        let gpt = std::fs::read(format!("{seeds}gpt-4-entries.raw")).unwrap();
        let t = read_table(gpt.len() as u64, disk_reader(&gpt)).unwrap();
        assert_eq!(t.scheme, Some(Scheme::Gpt));
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let got: Vec<(u32, u64, u64)> = t.partitions.iter().map(|p| (p.number, p.start / 512, p.len / 512)).collect();
        assert_eq!(got, [(1, 8, 16), (2, 40, 40)]);
    }

    #[test]
    fn random_disks_never_panic_nor_leave_the_disk() {
        // A small xorshift: deterministic, no extra dependency.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..300 {
            let mut d = if round % 2 == 0 { gpt_disk(512) } else { vec![0u8; 2 * MIB] };
            if round % 2 == 1 {
                mbr_entry(&mut d, 0, 0, 0x05, 8, 64);
            }
            // Flip bytes in the first sectors and near the end.
            for _ in 0..(next() % 40) {
                let region = if next() % 4 == 0 { d.len() - 64 * 1024 } else { 0 };
                let at = region + (next() % (64 * 1024)) as usize;
                d[at] = next() as u8;
            }
            let t = read_table(d.len() as u64, disk_reader(&d)).unwrap();
            for p in &t.partitions {
                assert!(p.len > 0 && p.start + p.len <= d.len() as u64, "round {round}: {p:?}");
                assert!(p.number >= 1 && p.number <= MAX_NUMBER);
            }
        }
    }
}
