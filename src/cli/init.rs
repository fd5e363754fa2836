use std::path::PathBuf;

use anyhow::bail;

use cbtfs::format::{DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MAX_PACK_SIZE, MIN_BLOCK_SIZE, MIN_PACK_SIZE};
use cbtfs::repo::Repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the new repository (created if missing; must be empty)
    pub repo: PathBuf,
    /// Block size: a power of two from 4K to 4M, e.g. 64K, 1M or 131072
    #[arg(long, default_value = "64K", value_parser = parse_block_size)]
    pub block_size: u32,
    /// Pack files are closed at about this size, from 1M to 64G; later
    /// ingests append to the newest pack until then. Larger packs mean fewer
    /// files, smaller ones less copying when gc rewrites a pack
    #[arg(long, default_value = "16M", value_parser = parse_pack_size)]
    pub pack_size: u64,
}

/// Parses `4096`, `4K`, `64k`, `1M`, `1MiB`, `2G`, `2GiB`.
fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("kib").or(lower.strip_suffix("k")) {
        (n, 1u64 << 10)
    } else if let Some(n) = lower.strip_suffix("mib").or(lower.strip_suffix("m")) {
        (n, 1 << 20)
    } else if let Some(n) = lower.strip_suffix("gib").or(lower.strip_suffix("g")) {
        (n, 1 << 30)
    } else {
        (lower.as_str(), 1)
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 64K, 1M or 131072"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s} is too large"))
}

pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    if !v.is_power_of_two() || v < MIN_BLOCK_SIZE as u64 || v > MAX_BLOCK_SIZE as u64 {
        return Err(format!("block size {s} must be a power of two from 4K to 4M"));
    }
    Ok(v as u32)
}

pub fn parse_pack_size(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if !(MIN_PACK_SIZE..=MAX_PACK_SIZE).contains(&v) {
        return Err(format!("pack size {s} must be from 1M to 64G"));
    }
    Ok(v)
}

pub fn run(a: Args) -> super::Outcome {
    if a.block_size == 0 {
        bail!("block size must not be zero");
    }
    Repo::init(&a.repo, a.block_size, a.pack_size)?;
    let kib = a.block_size / 1024;
    let note = if a.block_size == DEFAULT_BLOCK_SIZE { " (default)" } else { "" };
    outln!("initialised repository {} with {kib} KiB blocks{note}", a.repo.display())?;
    Ok(super::exit::OK)
}

#[cfg(test)]
mod tests {
    use super::parse_block_size as p;
    use super::parse_pack_size;

    #[test]
    fn pack_sizes() {
        assert_eq!(parse_pack_size("1G"), Ok(1 << 30));
        assert_eq!(parse_pack_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_pack_size("1M"), Ok(1 << 20));
        for bad in ["", "512K", "65G", "x", "0"] {
            assert!(parse_pack_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_sizes() {
        assert_eq!(p("64K"), Ok(65536));
        assert_eq!(p("64k"), Ok(65536));
        assert_eq!(p("131072"), Ok(131072));
        assert_eq!(p("4K"), Ok(4096));
        assert_eq!(p("4M"), Ok(4 << 20));
        assert_eq!(p("1MiB"), Ok(1 << 20));
        for bad in ["", "2K", "8M", "100K", "abc", "-64K", "0", "99999999999999999999M"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
