//! cbtfs binary: parse, set up logging, dispatch, map errors to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, exit};

fn exit_code_for(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<cbtfs::Error>() {
        Some(cbtfs::Error::Busy(_) | cbtfs::Error::InUse(_) | cbtfs::Error::Pruning(_)) => exit::BUSY,
        _ => exit::ERROR,
    }
}

/// One line: the error and its causes, joined.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for (i, c) in e.chain().enumerate() {
        let msg = c.to_string();
        if i > 0 {
            if s.contains(&msg) {
                continue;
            }
            s.push_str(": ");
        }
        s.push_str(&msg);
    }
    s.replace('\n', " ")
}

/// Raises the soft open-files limit to the hard limit: mounts hold pack
/// files and index connections for many threads, and the common soft
/// default of 1024 is an arbitrary cap, not a resource limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() -> ExitCode {
    raise_open_files_limit();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    cli::progress::init_logging(cli.log_filter());
    cli::set_quiet(cli.quiet);
    let res = match cli.command {
        Command::Init(a) => cli::init::run(a),
        Command::Ingest(a) => cli::ingest::run(a),
        Command::List(a) => cli::list::run(a),
        Command::Mount(a) => cli::mount::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Forget(a) => cli::forget::run(a),
        Command::Gc(a) => cli::gc::run(a),
        Command::Protect(a) => cli::protect::run(a),
        Command::Stats(a) => cli::stats::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::GenerateDocs(a) => cli::docs::run(a),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cbtfs: error: {}", one_line(&e));
            ExitCode::from(exit_code_for(&e))
        }
    }
}
