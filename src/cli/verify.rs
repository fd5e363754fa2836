use std::path::PathBuf;

use cbtfs::repo::Repo;
use cbtfs::verify::verify;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Print a JSON report on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> super::Outcome {
    let repo = Repo::open(&a.repo)?;
    let _readers = repo.lock_readers_shared()?;
    let mut bar = super::progress::Tracker::new("verify");
    let r = verify(&repo, |d, t| bar.update(d, t))?;
    bar.finish();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        for p in &r.index_problems {
            eprintln!("index damaged: {p}");
        }
        for d in &r.damaged {
            let users: Vec<String> = d.used_by.iter().map(|u| format!("{}/{}/{}", u.machine, u.point, u.disk)).collect();
            eprintln!(
                "damaged block in pack {} at offset {}: {}; affects {}",
                d.pack,
                d.offset,
                d.error,
                if users.is_empty() { "no restore point".to_string() } else { users.join(", ") }
            );
        }
        for name in r.leftover_packs.iter().filter(|_| !super::quiet()) {
            eprintln!("note: pack {name} is not in the index (left by an interrupted ingest, or being written now); the next ingest removes it");
        }
        for t in r.uncommitted_tails.iter().filter(|_| !super::quiet()) {
            eprintln!("note: pack {} has {} bytes past its committed end (left by an interrupted ingest, or being written now); `cbtfs gc` cuts them off, as does the next ingest that appends to that pack", t.pack, t.bytes);
        }
        if r.ok {
            outln!("ok: {} blocks ({} bytes) checked", r.blocks_checked, r.bytes_checked)?;
        } else {
            eprintln!("DAMAGE: {} of {} blocks damaged", r.damaged.len(), r.blocks_checked);
        }
    }
    Ok(if r.ok { super::exit::OK } else { super::exit::DAMAGE })
}
