//! onepd's gRPC protocols and the tonic/prost code generated from them.
//!
//! The `.proto` files live in `proto/proto/`, one package per area
//! (`onepd.<area>.v1`). The build compiles them with protox, so no system
//! `protoc` is needed. [`FILE_DESCRIPTOR_SET`] feeds the gRPC reflection service.

#![allow(missing_docs, clippy::all)]

pub mod codec;

/// The serialized descriptors of every onepd `.proto` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/onepd_descriptor.bin"));

/// `onepd.admin.v1`: operating destinations and reading their delivery
/// ledgers, as `onepd destination`, `onepd deliveries` and `onepd replay` do.
pub mod admin {
    /// Version 1 of the admin protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.admin.v1");
    }
}

/// `onepd.audit.v1`: reading, following and verifying the event log.
pub mod audit {
    /// Version 1 of the audit protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.audit.v1");
    }
}

/// `onepd.destination.v1`: the destination adapter protocol, served by every
/// adapter (built-in or third-party) and called by the activation engine.
pub mod destination {
    /// Version 1 of the destination adapter protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.destination.v1");
    }
}

/// `onepd.import.v1`: importing a whole CSV or NDJSON file, streamed in chunks.
pub mod import {
    /// Version 1 of the import protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.import.v1");
    }
}

/// `onepd.ingest.v1`: the gRPC ingest API, the Segment tracking spec typed.
pub mod ingest {
    /// Version 1 of the ingest protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.ingest.v1");
    }
}

/// `onepd.audiences.v1`: audiences defined, evaluated and previewed.
pub mod audiences {
    /// Version 1 of the audiences protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.audiences.v1");
    }
}

/// `onepd.profiles.v1`: reading profiles, their timelines and merges.
pub mod profiles {
    /// Version 1 of the profiles protocol.
    pub mod v1 {
        tonic::include_proto!("onepd.profiles.v1");
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn the_descriptor_set_carries_every_file_a_reflection_client_needs() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = set.file.iter().map(|file| file.name().to_owned()).collect();
        for needed in [
            "onepd/admin/v1/admin.proto",
            "onepd/audit/v1/audit.proto",
            "onepd/destination/v1/destination.proto",
            "onepd/import/v1/import.proto",
            "onepd/ingest/v1/ingest.proto",
            "onepd/profiles/v1/profiles.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
        ] {
            assert!(names.iter().any(|name| name == needed), "{needed} missing from {names:?}");
        }
    }
}
