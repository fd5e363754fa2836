//! The chunks answering one READ: each accepted chunk stays inside the
//! read, and a read is complete only when covered exactly once.
#![no_main]

use cbtfs::nbd::proto::{Fill, ReadReply};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut reply = ReadReply::new(4096, 256);
    let mut covered = vec![0u8; 256];
    let mut rest = data;
    // Each chunk: kind (2 bytes), payload length (1 byte), payload.
    while rest.len() >= 3 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let n = (rest[2] as usize).min(rest.len() - 3);
        let payload = &rest[3..3 + n];
        rest = &rest[3 + n..];
        match reply.chunk(kind, payload) {
            Ok(Fill::Data { at, bytes }) => covered[at..at + bytes.len()].iter_mut().for_each(|c| *c += 1),
            Ok(Fill::Zero { at, len }) => covered[at..at + len].iter_mut().for_each(|c| *c += 1),
            Ok(Fill::Nothing) | Err(_) => {}
        }
        assert!(covered.iter().all(|&c| c <= 1), "a byte was covered twice");
    }
    if reply.complete() {
        assert!(covered.iter().all(|&c| c == 1), "complete but not covered");
    }
});
