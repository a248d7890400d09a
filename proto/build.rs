//! Compiles the `.proto` schemas with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "protos/kenko/telemetry/v1/telemetry.proto",
        "protos/kenko/wal/v1/wal.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["protos"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
