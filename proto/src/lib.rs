//! The chat.v1 contract as Rust types, gRPC server traits and clients. Generated at build time
//! from `proto/chat/v1/chat.proto`; this crate holds no logic of its own.

#![allow(clippy::all, missing_docs)]

pub mod codec;
pub mod shared;

pub mod v1 {
    tonic::include_proto!("chat.v1");

    pub use crate::shared::MessageEvent;

    /// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
}
