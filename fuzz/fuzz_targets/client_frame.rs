//! A gRPC `Connect` stream's `ClientFrame`, as bytes off the wire: protobuf decoding, the
//! conversion to a session command, and the command's checks.
#![no_main]

use chat_proto::v1::ClientFrame;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::decode(data) {
        let command = chatd::transport::convert::command(frame);
        chatd_fuzz::check_command(&command);
    }
});
