//! A whole NBD client session against a server that sends these bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cbtfs::nbd::client::fuzz_session(data);
});
