//! Generates the gRPC and protobuf code for the `.proto` files in `proto/`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh machine from needing a system package.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".eventbus.v1")
        // Small starting buffers per stream; see `proto::PubSubCodec`.
        .codec_path("crate::proto::PubSubCodec")
        .compile_protos(&["proto/pubsub_api.proto"], &["proto"])?;
    // Zerobus needs the rows' message descriptors at run time.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out.join("sfzb_row_descriptor.bin"))
        .compile_protos(&["proto/sfzb_row.proto"], &["proto"])?;
    Ok(())
}
