//! A WebSocket text frame: JSON decoding into a session command (or a refusal, whose error
//! frame must encode), and the command's checks.
#![no_main]

use chatd::transport::ws::frames::{self, Inbound};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match frames::decode(text) {
        Ok(Inbound::Command(command)) => chatd_fuzz::check_command(&command),
        Ok(Inbound::Connect { hello, .. }) => {
            let _ = chatd::domain::ids::check_device_id(&hello.device_id);
        }
        Err(refusal) => {
            frames::refusal(&refusal, None).expect("a refusal encodes");
        }
    }
});
