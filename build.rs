//! Generates the gRPC and protobuf code for every `.proto` in `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh machine from needing a system package.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".eventbus.v1")
        .compile_protos(&["proto/pubsub_api.proto"], &["proto"])?;
    Ok(())
}
