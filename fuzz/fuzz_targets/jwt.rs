//! Bearer tokens: whatever a client puts in `authorization`, verification refuses it or
//! accepts it without a panic; only a token signed with the server's key is accepted.
#![no_main]

use chatd::auth::Authenticator;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing secret, at least 16 bytes";

fuzz_target!(|header: &str| {
    let auth = Authenticator::new(SECRET);
    let token = header.strip_prefix("Bearer ").unwrap_or(header);
    if auth.verify(token).is_ok() {
        // Only a token this key signed can pass; the fuzzer cannot forge one.
        panic!("an unsigned token was accepted: {token:?}");
    }
});
