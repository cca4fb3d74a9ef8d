//! onepd's gRPC protocols and the tonic/prost code generated from them.
//!
//! The `.proto` files live in `proto/proto/`, one package per area
//! (`onepd.<area>.v1`). The build compiles them with protox, so no system
//! `protoc` is needed. [`FILE_DESCRIPTOR_SET`] feeds the gRPC reflection service.

#![allow(missing_docs, clippy::all)]

/// The serialized descriptors of every onepd `.proto` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/onepd_descriptor.bin"));

/// `onepd.audit.v1`: reading, following and verifying the event log.
pub mod audit {
    /// Version 1 of the audit protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.audit.v1");
    }
}

/// `onepd.ingest.v1`: the gRPC ingest API, the Segment tracking spec typed.
pub mod ingest {
    /// Version 1 of the ingest protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.ingest.v1");
    }
}
