//! History page tokens: any string a client sends is refused or opened without a panic; a
//! sealed position opens to itself in its scope only, and its history position parses.
#![no_main]

use arbitrary::Arbitrary;
use chatd::domain::{messaging, page_token::PageTokens};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    scope: &'a str,
    other_scope: &'a str,
    position: &'a [u8],
    token: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let tokens = PageTokens::new(b"fuzzing root secret, 32 bytes..");
    if let Ok(position) = tokens.open(input.scope, input.token) {
        let _ = messaging::history_position(&position);
    }
    let sealed = tokens.seal(input.scope, input.position);
    let opened = tokens
        .open(input.scope, &sealed)
        .expect("a sealed token opens");
    assert_eq!(opened, input.position);
    if input.other_scope != input.scope {
        assert!(
            tokens.open(input.other_scope, &sealed).is_err(),
            "opened in another scope"
        );
    }
    let _ = messaging::history_position(&opened);
});
