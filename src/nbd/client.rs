//! One NBD connection: the handshake, then one request at a time.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::proto::{self, Extent, Fill, Info, ProtoError, ReadReply};
use super::{Addr, NbdUri};

/// A server that answers nothing for this long is taken as gone: a backup
/// must fail with a message, not hang.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("cannot connect to {uri}: {source}")]
    Connect { uri: String, source: std::io::Error },
    #[error("connection to the NBD server lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD protocol error: {0}")]
    Proto(#[from] ProtoError),
    #[error("the NBD server has no export named {0:?}")]
    UnknownExport(String),
    #[error("the NBD server does not support structured replies, which block status needs; use a newer server (qemu-nbd 2.11 or later, nbdkit)")]
    NoStructuredReplies,
    #[error("the NBD server refused {what}: {message}")]
    Refused { what: &'static str, message: String },
    #[error("the NBD server reported error {errno} for {what}: {message}")]
    Server { what: String, errno: u32, message: String },
    /// An earlier request failed in a way that leaves the connection out
    /// of step; every later one reports that first failure.
    #[error("{0}")]
    Broken(String),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

pub struct NbdClient {
    stream: Stream,
    size: u64,
    /// Metadata contexts the server agreed to: (name, id).
    contexts: Vec<(String, u32)>,
    cookie: u64,
    max_read: u32,
    scratch: Vec<u8>,
    /// Why the connection can no longer be used, once it cannot.
    broken: Option<String>,
}

fn read_exact_or_closed(s: &mut Stream, buf: &mut [u8]) -> Result<(), NbdError> {
    s.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            NbdError::Io(std::io::Error::new(e.kind(), "the server closed the connection"))
        } else {
            NbdError::Io(e)
        }
    })
}

impl NbdClient {
    /// Connects and negotiates structured replies, the metadata contexts
    /// asked for (those the server does not know are simply absent from
    /// [`NbdClient::context`]), and the export.
    pub fn connect(uri: &NbdUri, contexts: &[String]) -> Result<NbdClient, NbdError> {
        let stream = match &uri.addr {
            Addr::Unix(p) => {
                let s = UnixStream::connect(p).map_err(|source| NbdError::Connect { uri: uri.to_string(), source })?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Stream::Unix(s)
            }
            Addr::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .map_err(|source| NbdError::Connect { uri: uri.to_string(), source })?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        NbdClient::over(stream, &uri.export, contexts)
    }

    fn over(stream: Stream, export: &str, contexts: &[String]) -> Result<NbdClient, NbdError> {
        let mut c = NbdClient { stream, size: 0, contexts: Vec::new(), cookie: 0, max_read: proto::MAX_READ, scratch: Vec::new(), broken: None };
        c.handshake(export, contexts)?;
        Ok(c)
    }

    fn handshake(&mut self, export: &str, contexts: &[String]) -> Result<(), NbdError> {
        let mut g = [0u8; 18];
        read_exact_or_closed(&mut self.stream, &mut g)?;
        let flags = proto::parse_greeting(&g)?;
        let mut cflags = proto::CLIENT_FIXED_NEWSTYLE;
        if flags & proto::FLAG_NO_ZEROES != 0 {
            cflags |= proto::CLIENT_NO_ZEROES;
        }
        self.stream.write_all(&cflags.to_be_bytes())?;

        self.stream.write_all(&proto::option(proto::OPT_STRUCTURED_REPLY, &[]))?;
        match self.option_reply(proto::OPT_STRUCTURED_REPLY)? {
            (proto::REP_ACK, _) => {}
            (t, _) if t & proto::REP_ERR_BIT != 0 => return Err(NbdError::NoStructuredReplies),
            (t, _) => return Err(ProtoError::Malformed(format!("reply type {t} to the structured reply option")).into()),
        }

        if !contexts.is_empty() {
            self.stream.write_all(&proto::option(proto::OPT_SET_META_CONTEXT, &proto::meta_context_data(export, contexts)))?;
            loop {
                match self.option_reply(proto::OPT_SET_META_CONTEXT)? {
                    (proto::REP_ACK, _) => break,
                    (proto::REP_META_CONTEXT, data) => {
                        let (id, name) = proto::parse_meta_context(&data)?;
                        if !contexts.contains(&name) {
                            return Err(ProtoError::Malformed(format!("context {name:?} was not asked for")).into());
                        }
                        self.contexts.push((name, id));
                    }
                    (proto::REP_ERR_UNKNOWN, _) => return Err(NbdError::UnknownExport(export.to_string())),
                    (t, data) if t & proto::REP_ERR_BIT != 0 => {
                        return Err(NbdError::Refused { what: "metadata contexts", message: reply_message(t, &data) });
                    }
                    (t, _) => return Err(ProtoError::Malformed(format!("reply type {t} to set-meta-context")).into()),
                }
            }
        }

        self.stream.write_all(&proto::option(proto::OPT_GO, &proto::go_data(export)))?;
        let mut size = None;
        loop {
            match self.option_reply(proto::OPT_GO)? {
                (proto::REP_ACK, _) => break,
                (proto::REP_INFO, data) => match proto::parse_info(&data)? {
                    Info::Export { size: s, .. } => size = Some(s),
                    Info::BlockSize { maximum, .. } => {
                        if maximum >= 4096 {
                            self.max_read = self.max_read.min(maximum);
                        }
                    }
                    Info::Other => {}
                },
                (proto::REP_ERR_UNKNOWN, _) => return Err(NbdError::UnknownExport(export.to_string())),
                (t, data) if t & proto::REP_ERR_BIT != 0 => {
                    return Err(NbdError::Refused { what: "the export", message: reply_message(t, &data) });
                }
                (t, _) => return Err(ProtoError::Malformed(format!("reply type {t} to go")).into()),
            }
        }
        self.size = size.ok_or_else(|| ProtoError::Malformed("the server did not tell the export size".into()))?;
        Ok(())
    }

    /// Reads one option reply: (type, data).
    fn option_reply(&mut self, opt: u32) -> Result<(u32, Vec<u8>), NbdError> {
        let mut h = [0u8; 20];
        read_exact_or_closed(&mut self.stream, &mut h)?;
        let (kind, len) = proto::parse_option_reply_header(&h, opt)?;
        let mut data = vec![0u8; len as usize];
        read_exact_or_closed(&mut self.stream, &mut data)?;
        Ok((kind, data))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The id the server gave metadata context `name`, if it knows it.
    pub fn context(&self, name: &str) -> Option<u32> {
        self.contexts.iter().find(|(n, _)| n == name).map(|&(_, id)| id)
    }

    fn next_cookie(&mut self) -> u64 {
        self.cookie = self.cookie.wrapping_add(1);
        self.cookie
    }

    /// Reads a chunk header answering `cookie`.
    fn chunk_header(&mut self, cookie: u64) -> Result<proto::ChunkHeader, NbdError> {
        let mut h = [0u8; 20];
        read_exact_or_closed(&mut self.stream, &mut h)?;
        let h = proto::parse_chunk_header(&h)?;
        if h.cookie != cookie {
            return Err(ProtoError::Malformed(format!("reply for request {}, expected {cookie}", h.cookie)).into());
        }
        Ok(h)
    }

    fn payload(&mut self, len: u32) -> Result<Vec<u8>, NbdError> {
        let mut p = std::mem::take(&mut self.scratch);
        p.clear();
        p.resize(len as usize, 0);
        read_exact_or_closed(&mut self.stream, &mut p)?;
        Ok(p)
    }

    /// Runs request `f` unless the connection is broken; a failure that
    /// leaves it out of step (anything but a server-reported error, after
    /// which the reply was read to its end) breaks it.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, NbdError>) -> Result<T, NbdError> {
        if let Some(why) = &self.broken {
            return Err(NbdError::Broken(why.clone()));
        }
        let r = f(self);
        if let Err(e) = &r
            && !matches!(e, NbdError::Server { .. })
        {
            self.broken = Some(e.to_string());
        }
        r
    }

    /// Fills `buf` from `offset` (past the end of the export: an error).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.guarded(|c| c.read_all(offset, buf))
    }

    fn read_all(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(self.max_read as usize);
            self.read_one(offset + done as u64, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    fn read_one(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let cookie = self.next_cookie();
        self.stream.write_all(&proto::request(proto::CMD_READ, 0, cookie, offset, buf.len() as u32))?;
        let mut reply = ReadReply::new(offset, buf.len() as u32);
        let mut failure = None;
        loop {
            let h = self.chunk_header(cookie)?;
            let payload = self.payload(h.len)?;
            match reply.chunk(h.kind, &payload) {
                Ok(Fill::Data { at, bytes }) => buf[at..at + bytes.len()].copy_from_slice(bytes),
                Ok(Fill::Zero { at, len }) => buf[at..at + len].fill(0),
                Ok(Fill::Nothing) => {}
                // Keep reading to the last chunk, so the connection stays
                // in step, then report the first failure.
                Err(proto::ReadError::Server { errno, message }) => {
                    failure.get_or_insert(NbdError::Server { what: format!("reading {} bytes at {offset}", buf.len()), errno, message });
                }
                Err(proto::ReadError::Proto(e)) => return Err(e.into()),
            }
            self.scratch = payload;
            if h.done {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if !reply.complete() {
            return Err(ProtoError::Malformed(format!("the reply to a read at {offset} left bytes out")).into());
        }
        Ok(())
    }

    /// Extents of context `ctx` from `offset`, as the server describes
    /// them for at most `len` bytes (at least one extent).
    fn block_status(&mut self, ctx: u32, offset: u64, len: u32) -> Result<Vec<Extent>, NbdError> {
        let cookie = self.next_cookie();
        self.stream.write_all(&proto::request(proto::CMD_BLOCK_STATUS, 0, cookie, offset, len))?;
        let mut extents = None;
        let mut failure = None;
        loop {
            let h = self.chunk_header(cookie)?;
            let payload = self.payload(h.len)?;
            match h.kind {
                proto::REPLY_TYPE_NONE => {}
                proto::REPLY_TYPE_BLOCK_STATUS => {
                    let (id, ex) = proto::parse_block_status(&payload)?;
                    if id == ctx {
                        if extents.is_some() {
                            return Err(ProtoError::Malformed("two block status chunks for one context".into()).into());
                        }
                        extents = Some(ex);
                    }
                }
                k if k & proto::REPLY_TYPE_ERROR_BIT != 0 => {
                    let (errno, message) = proto::parse_error_chunk(&payload)?;
                    failure.get_or_insert(NbdError::Server { what: format!("block status at {offset}"), errno, message });
                }
                k => return Err(ProtoError::Malformed(format!("chunk type {k} in a block status reply")).into()),
            }
            self.scratch = payload;
            if h.done {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        extents.ok_or_else(|| ProtoError::Malformed("block status reply without the context asked for".into()).into())
    }

    /// The byte ranges of the whole export whose flags in context `ctx`
    /// satisfy `pick`, merged.
    pub fn ranges_where(&mut self, ctx: u32, pick: impl Fn(u32) -> bool) -> Result<Vec<Range<u64>>, NbdError> {
        let whole = 0..self.size;
        self.ranges_where_in(ctx, std::slice::from_ref(&whole), pick)
    }

    /// [`NbdClient::ranges_where`], asking only about `within` (sorted,
    /// not overlapping; cut at the end of the export): one walk per range.
    pub fn ranges_where_in(
        &mut self,
        ctx: u32,
        within: &[Range<u64>],
        pick: impl Fn(u32) -> bool,
    ) -> Result<Vec<Range<u64>>, NbdError> {
        self.guarded(|c| c.ranges_where_inner(ctx, within, pick))
    }

    fn ranges_where_inner(
        &mut self,
        ctx: u32,
        within: &[Range<u64>],
        pick: impl Fn(u32) -> bool,
    ) -> Result<Vec<Range<u64>>, NbdError> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in within {
            let stop = r.end.min(self.size);
            let mut pos = r.start;
            while pos < stop {
                let ask = (stop - pos).min(1 << 30) as u32;
                let extents = self.block_status(ctx, pos, ask)?;
                let start = pos;
                // The last extent may reach past what was asked for.
                for e in extents {
                    if pos >= stop {
                        break;
                    }
                    let end = (pos + e.len as u64).min(stop);
                    if pick(e.flags) {
                        match out.last_mut() {
                            Some(last) if last.end == pos => last.end = end,
                            _ => out.push(pos..end),
                        }
                    }
                    pos = end;
                }
                if pos == start {
                    return Err(ProtoError::Malformed("block status made no progress".into()).into());
                }
            }
        }
        Ok(out)
    }
}

/// The message of an option error reply, or its type if it has none.
fn reply_message(kind: u32, data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data).trim().to_string();
    let name = match kind {
        proto::REP_ERR_UNSUP => "unsupported",
        proto::REP_ERR_POLICY => "forbidden by policy",
        proto::REP_ERR_INVALID => "invalid",
        proto::REP_ERR_TLS_REQD => "TLS required",
        _ => "error",
    };
    if text.is_empty() { name.to_string() } else { format!("{name}: {text}") }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let cookie = self.next_cookie();
        let _ = self.stream.write_all(&proto::request(proto::CMD_DISC, 0, cookie, 0, 0));
    }
}

/// Runs a whole client session against a server that answers with exactly
/// `server` (then closes): the handshake asking for `base:allocation` and a
/// dirty bitmap, a block status walk of each context granted, and a read.
/// For fuzzing: whatever the bytes, this returns (an error, mostly) and
/// never panics, and a read that succeeds was covered exactly once.
#[doc(hidden)]
pub fn fuzz_session(server: &[u8]) {
    let Ok((ours, theirs)) = UnixStream::pair() else { return };
    let _ = ours.set_read_timeout(Some(Duration::from_secs(5)));
    let bytes = server.to_vec();
    let feeder = std::thread::spawn(move || {
        let mut theirs = theirs;
        let _ = theirs.write_all(&bytes);
        let _ = theirs.shutdown(std::net::Shutdown::Write);
        // Drain what the client sends, so its writes never block.
        let _ = std::io::copy(&mut theirs, &mut std::io::sink());
    });
    let contexts = ["base:allocation".to_string(), "qemu:dirty-bitmap:b".to_string()];
    if let Ok(mut c) = NbdClient::over(Stream::Unix(ours), "e", &contexts) {
        for name in &contexts {
            if let Some(ctx) = c.context(name) {
                let _ = c.ranges_where(ctx, |f| f & 1 != 0);
            }
        }
        let n = c.size().min(1 << 16) as usize;
        let mut buf = vec![0u8; n];
        let _ = c.read(0, &mut buf);
        // Closing the socket ends the feeder's drain.
        drop(c);
    }
    let _ = feeder.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(v: &mut Vec<u8>, opt: u32, kind: u32, data: &[u8]) {
        v.extend_from_slice(&proto::OPT_REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&opt.to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(data);
    }

    fn chunk(v: &mut Vec<u8>, done: bool, kind: u16, cookie: u64, payload: &[u8]) {
        v.extend_from_slice(&proto::STRUCTURED_REPLY_MAGIC.to_be_bytes());
        v.extend_from_slice(&(done as u16).to_be_bytes());
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
    }

    /// A block status reply for context `ctx`: extents of (length, flags).
    fn status(v: &mut Vec<u8>, cookie: u64, ctx: u32, extents: &[(u32, u32)]) {
        let mut p = ctx.to_be_bytes().to_vec();
        for (len, flags) in extents {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        chunk(v, true, proto::REPLY_TYPE_BLOCK_STATUS, cookie, &p);
    }

    /// A good server's handshake for an export of `size` bytes, granting
    /// `base:allocation` as context 1 and `qemu:dirty-bitmap:b` as 2.
    fn handshake(size: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
        v.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&3u16.to_be_bytes());
        rep(&mut v, proto::OPT_STRUCTURED_REPLY, proto::REP_ACK, &[]);
        for (id, name) in [(1u32, "base:allocation"), (2, "qemu:dirty-bitmap:b")] {
            let mut d = id.to_be_bytes().to_vec();
            d.extend_from_slice(name.as_bytes());
            rep(&mut v, proto::OPT_SET_META_CONTEXT, proto::REP_META_CONTEXT, &d);
        }
        rep(&mut v, proto::OPT_SET_META_CONTEXT, proto::REP_ACK, &[]);
        let mut info = proto::INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        rep(&mut v, proto::OPT_GO, proto::REP_INFO, &info);
        rep(&mut v, proto::OPT_GO, proto::REP_ACK, &[]);
        v
    }

    /// What a good server sends for [`fuzz_session`]: greeting, the
    /// option replies, block status for both contexts, a read reply.
    fn good_transcript(size: u64) -> Vec<u8> {
        let mut v = handshake(size);
        for (cookie, ctx) in [(1u64, 1u32), (2, 2)] {
            status(&mut v, cookie, ctx, &[(size as u32, 0)]);
        }
        let mut d = 0u64.to_be_bytes().to_vec();
        d.extend_from_slice(&vec![0x5a; size as usize / 2]);
        chunk(&mut v, false, proto::REPLY_TYPE_OFFSET_DATA, 3, &d);
        let mut h = (size / 2).to_be_bytes().to_vec();
        h.extend_from_slice(&((size / 2) as u32).to_be_bytes());
        chunk(&mut v, true, proto::REPLY_TYPE_OFFSET_HOLE, 3, &h);
        v
    }

    /// A client talking to a server that sends `transcript`.
    fn client_for(transcript: Vec<u8>) -> (NbdClient, std::thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs.write_all(&transcript).unwrap();
            let _ = std::io::copy(&mut theirs, &mut std::io::sink());
        });
        let contexts = ["base:allocation".to_string(), "qemu:dirty-bitmap:b".to_string()];
        (NbdClient::over(Stream::Unix(ours), "e", &contexts).unwrap(), feeder)
    }

    /// Asked about some ranges only, the client walks each one and keeps
    /// what the server says about it, nothing past it: servers may answer
    /// with a last extent reaching beyond the request.
    #[test]
    fn ranges_where_in_keeps_to_the_ranges_asked_about() {
        let mut t = handshake(1 << 20);
        // 4096..12288: data for 16 KiB, past the end of the range.
        status(&mut t, 1, 1, &[(16384, 0)]);
        // 65536..73728: a hole, then data reaching past the range.
        status(&mut t, 2, 1, &[(4096, proto::STATE_ZERO | proto::STATE_HOLE), (8192, 0)]);
        // 1044480..the end: data up to the end of the export.
        status(&mut t, 3, 1, &[(4096, 0)]);
        let (mut c, feeder) = client_for(t);
        let within = [4096..12288, 65536..73728, 1044480..(1 << 20) + 8192];
        let got = c.ranges_where_in(1, &within, |f| f & proto::STATE_ZERO == 0).unwrap();
        assert_eq!(got, vec![4096..12288, 69632..73728, 1044480..1 << 20]);
        drop(c);
        feeder.join().unwrap();
    }

    #[test]
    fn a_good_server_session_reads_right() {
        let (mut c, feeder) = client_for(good_transcript(4096));
        assert_eq!(c.size(), 4096);
        assert_eq!(c.context("base:allocation"), Some(1));
        assert_eq!(c.ranges_where(1, |f| f == 0).unwrap(), vec![0..4096]);
        assert_eq!(c.ranges_where(2, |f| f & 1 != 0).unwrap(), Vec::<Range<u64>>::new());
        let mut buf = vec![9u8; 4096];
        c.read(0, &mut buf).unwrap();
        assert!(buf[..2048].iter().all(|&b| b == 0x5a) && buf[2048..].iter().all(|&b| b == 0));
        drop(c);
        feeder.join().unwrap();
    }

    /// Truncated and mutated sessions: errors, never panics or hangs.
    #[test]
    fn mutated_sessions_never_panic() {
        let good = good_transcript(4096);
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for cut in (0..good.len()).step_by(7) {
            fuzz_session(&good[..cut]);
        }
        for _ in 0..300 {
            let mut t = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % t.len();
                t[i] = next() as u8;
            }
            fuzz_session(&t);
        }
    }
}
