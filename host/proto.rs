//! Code generated from `proto/` by `build.rs`.

/// The Salesforce Pub/Sub API (`eventbus.v1`), exactly as publicly specified.
pub mod pubsub {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("eventbus.v1");
}

/// The Pub/Sub API's protobuf codec with small starting buffers. tonic starts every stream
/// with 8 KB for encoding and 8 KB for decoding, and keeps them for the stream's life:
/// 160 MB for 10,000 subscriptions whose requests are a few dozen bytes and whose
/// responses, one event a second, a kilobyte or two. The buffers grow when a message
/// needs more, so a busy stream reads large batches as before. The simulator's server
/// uses the same codec.
#[derive(Debug, Clone)]
pub struct PubSubCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for PubSubCodec<T, U> {
    fn default() -> Self {
        PubSubCodec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for PubSubCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        // tonic's yield threshold stays: ready messages are sent together up to 32 KB.
        tonic_prost::ProstCodec::<T, U>::raw_encoder(tonic::codec::BufferSettings::new(
            256,
            32 << 10,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(tonic::codec::BufferSettings::new(
            2 << 10,
            32 << 10,
        ))
    }
}

/// The rows written through Zerobus (`proto/sfzb_row.proto`).
pub mod row {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sfzb.zerobus");

    /// The compiled descriptors of `proto/sfzb_row.proto`.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sfzb_row_descriptor.bin"));
}
