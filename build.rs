//! Compiles `proto/` with protox (a protobuf compiler in Rust, so no system `protoc`)
//! and generates the prost types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/cloudevents.proto",
        "proto/switchyard/v1/record.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
