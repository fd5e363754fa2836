//! A small NBD client: enough to back up a disk exported by `qemu-nbd`,
//! `qemu-storage-daemon`, a hypervisor's backup export (oVirt, Proxmox) or
//! nbdkit. It reads data and asks for block status in the metadata
//! contexts `base:allocation` (holes and zeros, to skip them in a full
//! backup) and `qemu:dirty-bitmap:NAME` (the blocks a persistent dirty
//! bitmap marks as changed since its checkpoint).
//!
//! Written here rather than taken from a crate: the Rust NBD crates found
//! lack structured replies and block status, and libnbd's Rust bindings
//! need a newer libnbd than the distribution ships. The wire parsing is
//! pure and tested on random input (`proto`).

pub mod client;
pub mod proto;

pub use client::{NbdClient, NbdError};

/// Where an NBD export is: `nbd://HOST[:PORT]/EXPORT` or
/// `nbd+unix:///EXPORT?socket=PATH` (the URI forms of the NBD project's
/// URI specification, without TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub addr: Addr,
    pub export: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp { host: String, port: u16 },
    Unix(std::path::PathBuf),
}

impl NbdUri {
    /// Whether `s` is meant as an NBD URI (as opposed to a path).
    pub fn looks_like(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://") || s.starts_with("nbds://") || s.starts_with("nbds+unix://")
    }

    pub fn parse(s: &str) -> Result<NbdUri, String> {
        if s.starts_with("nbds") {
            return Err(format!("{s}: NBD over TLS (nbds) is not supported; use an nbd:// or nbd+unix:// export"));
        }
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(|| format!("{s}: nbd+unix needs ?socket=PATH"))?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(format!("{s}: nbd+unix URIs have no host; write nbd+unix:///EXPORT?socket=PATH"));
            }
            let export = path.strip_prefix('/').unwrap_or(path).to_string();
            let mut socket = None;
            for kv in query.split('&') {
                match kv.split_once('=') {
                    Some(("socket", p)) if !p.is_empty() => socket = Some(p.to_string()),
                    _ => return Err(format!("{s}: unknown or empty URI parameter {kv:?}; only socket=PATH is known")),
                }
            }
            let socket = socket.ok_or_else(|| format!("{s}: nbd+unix needs ?socket=PATH"))?;
            return Ok(NbdUri { addr: Addr::Unix(socket.into()), export });
        }
        let rest = s.strip_prefix("nbd://").ok_or_else(|| format!("{s}: not an nbd:// or nbd+unix:// URI"))?;
        if rest.contains('?') {
            return Err(format!("{s}: nbd:// URIs take no parameters"));
        }
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("{s}: bad port {p:?}"))?)
            }
            _ => (hostport, 10809),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s}: no host; write nbd://HOST[:PORT]/EXPORT"));
        }
        Ok(NbdUri { addr: Addr::Tcp { host: host.to_string(), port }, export: export.to_string() })
    }
}

impl std::fmt::Display for NbdUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.addr {
            Addr::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            Addr::Unix(p) => write!(f, "nbd+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            NbdUri::parse("nbd+unix:///sda?socket=/run/x.sock").unwrap(),
            NbdUri { addr: Addr::Unix("/run/x.sock".into()), export: "sda".into() }
        );
        assert_eq!(
            NbdUri::parse("nbd+unix://?socket=/s").unwrap(),
            NbdUri { addr: Addr::Unix("/s".into()), export: "".into() }
        );
        assert_eq!(
            NbdUri::parse("nbd://host:10900/disk0").unwrap(),
            NbdUri { addr: Addr::Tcp { host: "host".into(), port: 10900 }, export: "disk0".into() }
        );
        assert_eq!(
            NbdUri::parse("nbd://10.0.0.1").unwrap(),
            NbdUri { addr: Addr::Tcp { host: "10.0.0.1".into(), port: 10809 }, export: "".into() }
        );
        assert_eq!(
            NbdUri::parse("nbd://[::1]:10809/e").unwrap(),
            NbdUri { addr: Addr::Tcp { host: "::1".into(), port: 10809 }, export: "e".into() }
        );
        for bad in [
            "nbd+unix:///sda",
            "nbd+unix:///sda?sock=/x",
            "nbd+unix://host/sda?socket=/x",
            "nbd://:10809/x",
            "nbd://h:port/x",
            "nbds://h/x",
            "nbd://h/x?a=b",
            "/dev/sda",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad}");
        }
        assert!(NbdUri::looks_like("nbd://h/x") && NbdUri::looks_like("nbd+unix:///x?socket=/s"));
        assert!(!NbdUri::looks_like("/var/lib/disk.img"));
    }
}
