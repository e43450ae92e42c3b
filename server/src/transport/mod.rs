//! The wire: gRPC (chat.v1, reflection, health) and plain HTTP probes on one port. Only this
//! module knows protobuf; it decodes frames, calls the domain, and encodes the answers.

pub mod admin;
pub mod convert;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod status;
pub mod tls;
pub mod web;
pub mod ws;
