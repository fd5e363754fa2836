//! `generate-docs DIR` (hidden): writes the man pages (cbtfs(1) and one
//! per subcommand) and the bash, zsh and fish completions, all from the
//! clap definitions, so they cannot drift from the real options. The
//! committed copies in `man/` are checked against this by the tests.

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write the pages into (completions go to DIR/completions)
    pub dir: PathBuf,
}

pub fn run(a: Args) -> super::Outcome {
    let cmd = super::Cli::command();
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    clap_mangen::generate_to(cmd.clone(), &a.dir).with_context(|| format!("cannot write man pages to {}", a.dir.display()))?;
    let comp = a.dir.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("cannot create {}", comp.display()))?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "cbtfs", &comp)
            .with_context(|| format!("cannot write {shell} completions to {}", comp.display()))?;
    }
    Ok(super::exit::OK)
}
