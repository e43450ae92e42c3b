//! The protobuf codec of every chat.v1 RPC: tonic's prost codec with small per-call buffers.
//!
//! tonic gives each call an 8 KiB encode and an 8 KiB decode buffer up front. A chat server
//! holds one long-lived `Connect` call per device, mostly idle, so those 16 KiB were the largest
//! part of an idle session's memory. Chat frames are small (a message event is ~150 bytes);
//! the buffers start at 256 bytes and grow when a larger frame comes.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size and growth step of a call's encode and decode buffers.
const BUFFER_BYTES: usize = 256;
/// How much encoded output a stream gathers before handing it to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

pub struct LeanCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
