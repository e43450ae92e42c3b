//! Compiles `chat/v1/chat.proto` with protox (pure Rust), so no system `protoc` is needed,
//! and writes the descriptor set that the server's reflection service serves.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=chat");
    let fds = protox::compile(["chat/v1/chat.proto"], ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("chat_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        // The `Connect` RPC would clash with the generated `connect(dst)` constructor;
        // clients build a `Channel` themselves and call `ChatServiceClient::new`.
        .build_transport(false)
        // Small per-call buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        // Hand-written so a server can encode a message once for all its recipients.
        .extern_path(".chat.v1.MessageEvent", "crate::shared::MessageEvent")
        .compile_fds(fds)?;
    Ok(())
}
