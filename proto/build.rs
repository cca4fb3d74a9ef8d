//! Compiles the `.proto` files with protox (a pure-Rust compiler), so building
//! onepd needs no system `protoc`.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "onepd/admin/v1/admin.proto",
    "onepd/audiences/v1/audiences.proto",
    "onepd/audit/v1/audit.proto",
    "onepd/destination/v1/destination.proto",
    "onepd/import/v1/import.proto",
    "onepd/ingest/v1/ingest.proto",
    "onepd/profiles/v1/profiles.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("onepd_descriptor.bin"), descriptors.encode_to_vec())?;
    // A request that does not decode is the caller's mistake: see src/codec.rs.
    tonic_prost_build::configure().codec_path("crate::codec::Codec").compile_fds(descriptors)?;
    Ok(())
}
