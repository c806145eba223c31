//! The prost types generated from `proto/` by `build.rs`.

/// The CloudEvents protobuf format (`proto/cloudevents.proto`).
#[allow(clippy::all, missing_docs)]
pub mod cloudevents {
    include!(concat!(env!("OUT_DIR"), "/io.cloudevents.v1.rs"));
}

/// Switchyard's log record (`proto/switchyard/v1/record.proto`).
#[allow(clippy::all, missing_docs)]
pub mod record {
    include!(concat!(env!("OUT_DIR"), "/switchyard.v1.rs"));
}
