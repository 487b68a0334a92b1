//! CSI v1 gRPC types and services for certvol.
//!
//! Generated at build time from `csi.proto` (the Identity and Node services of
//! the Container Storage Interface spec) with `protox` + `tonic-prost-build`,
//! so no `protoc` is needed. Everything lives in [`csi::v1`], mirroring the
//! protobuf package:
//!
//! ```
//! use certvol_proto::csi::v1::{
//!     NodePublishVolumeRequest, identity_client::IdentityClient,
//!     identity_server::{Identity, IdentityServer}, node_client::NodeClient,
//!     node_server::{Node, NodeServer},
//! };
//! ```
//!
//! Requests that carry fields the spec marks as secret (`secrets` maps) or as
//! possibly sensitive (`MountVolume::mount_flags`) have a hand-written `Debug`
//! that prints `<redacted>` instead of the values, so formatting a request
//! into a log line can never leak credentials.

#![forbid(unsafe_code)]

/// Version of the CSI specification `csi.proto` was written against.
pub const CSI_SPEC_VERSION: &str = "1.10.0";

pub mod csi {
    //! The `csi` protobuf package.

    pub mod v1 {
        //! Package `csi.v1`: messages, enums, and the `Identity` and `Node`
        //! services (`*_server` for plugins, `*_client` for callers/tests).

        // Generated code follows prost/tonic's conventions, not ours; lints
        // on it would only be noise we cannot fix at the source.
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::nursery,
            missing_docs,
            unreachable_pub
        )]
        mod generated {
            include!(concat!(env!("OUT_DIR"), "/csi.v1.rs"));
        }

        pub use generated::*;

        use std::collections::HashMap;
        use std::fmt;

        /// Shows which secret keys were sent (useful when a driver rejects a
        /// request for a missing key) but never their values.
        struct RedactedMap<'a>(&'a HashMap<String, String>);

        impl fmt::Debug for RedactedMap<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Sorted so log lines are stable across HashMap iteration orders.
                let mut keys: Vec<&str> = self.0.keys().map(String::as_str).collect();
                keys.sort_unstable();
                f.debug_map()
                    .entries(keys.into_iter().map(|k| (k, Redacted)))
                    .finish()
            }
        }

        struct Redacted;

        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }

        /// Mount flags may embed credentials (e.g. `password=` for CIFS), so
        /// only their number is shown.
        struct RedactedList(usize);

        impl fmt::Debug for RedactedList {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "<{} redacted>", self.0)
            }
        }

        // The impls below destructure without `..` so that a field added to
        // csi.proto fails to compile here until someone decides whether it
        // must be redacted.

        impl fmt::Debug for volume_capability::MountVolume {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Self {
                    fs_type,
                    mount_flags,
                    volume_mount_group,
                } = self;
                f.debug_struct("MountVolume")
                    .field("fs_type", fs_type)
                    .field("mount_flags", &RedactedList(mount_flags.len()))
                    .field("volume_mount_group", volume_mount_group)
                    .finish()
            }
        }

        impl fmt::Debug for NodeStageVolumeRequest {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Self {
                    volume_id,
                    publish_context,
                    staging_target_path,
                    volume_capability,
                    secrets,
                    volume_context,
                } = self;
                f.debug_struct("NodeStageVolumeRequest")
                    .field("volume_id", volume_id)
                    .field("publish_context", publish_context)
                    .field("staging_target_path", staging_target_path)
                    .field("volume_capability", volume_capability)
                    .field("secrets", &RedactedMap(secrets))
                    .field("volume_context", volume_context)
                    .finish()
            }
        }

        impl fmt::Debug for NodePublishVolumeRequest {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Self {
                    volume_id,
                    publish_context,
                    staging_target_path,
                    target_path,
                    volume_capability,
                    readonly,
                    secrets,
                    volume_context,
                } = self;
                f.debug_struct("NodePublishVolumeRequest")
                    .field("volume_id", volume_id)
                    .field("publish_context", publish_context)
                    .field("staging_target_path", staging_target_path)
                    .field("target_path", target_path)
                    .field("volume_capability", volume_capability)
                    .field("readonly", readonly)
                    .field("secrets", &RedactedMap(secrets))
                    .field("volume_context", volume_context)
                    .finish()
            }
        }

        impl fmt::Debug for NodeExpandVolumeRequest {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let Self {
                    volume_id,
                    volume_path,
                    capacity_range,
                    staging_target_path,
                    volume_capability,
                    secrets,
                } = self;
                f.debug_struct("NodeExpandVolumeRequest")
                    .field("volume_id", volume_id)
                    .field("volume_path", volume_path)
                    .field("capacity_range", capacity_range)
                    .field("staging_target_path", staging_target_path)
                    .field("volume_capability", volume_capability)
                    .field("secrets", &RedactedMap(secrets))
                    .finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::csi::v1::{
        NodeExpandVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
        VolumeCapability,
        volume_capability::{AccessType, MountVolume},
    };

    fn secrets() -> std::collections::HashMap<String, String> {
        [("token".to_string(), "s3cr3t-value".to_string())].into()
    }

    fn mount_capability() -> Option<VolumeCapability> {
        Some(VolumeCapability {
            access_mode: None,
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: "ext4".into(),
                mount_flags: vec!["password=hunter2".into()],
                volume_mount_group: "2000".into(),
            })),
        })
    }

    fn assert_redacted(debug: &str) {
        assert!(!debug.contains("s3cr3t-value"), "secret leaked: {debug}");
        assert!(!debug.contains("hunter2"), "mount flag leaked: {debug}");
        // Keys and non-secret fields stay visible for troubleshooting.
        assert!(debug.contains("\"token\": <redacted>"), "{debug}");
        assert!(debug.contains("mount_flags: <1 redacted>"), "{debug}");
        assert!(debug.contains("\"2000\""), "{debug}");
        assert!(debug.contains("vol-1"), "{debug}");
    }

    #[test]
    fn debug_output_never_contains_secret_values() {
        let publish = NodePublishVolumeRequest {
            volume_id: "vol-1".into(),
            target_path: "/mnt/t".into(),
            volume_capability: mount_capability(),
            secrets: secrets(),
            ..Default::default()
        };
        assert_redacted(&format!("{publish:?}"));
        // tonic's request wrapper is what handlers usually log.
        assert_redacted(&format!("{:?}", tonic::Request::new(publish)));

        let stage = NodeStageVolumeRequest {
            volume_id: "vol-1".into(),
            volume_capability: mount_capability(),
            secrets: secrets(),
            ..Default::default()
        };
        assert_redacted(&format!("{stage:#?}"));

        let expand = NodeExpandVolumeRequest {
            volume_id: "vol-1".into(),
            volume_capability: mount_capability(),
            secrets: secrets(),
            ..Default::default()
        };
        assert_redacted(&format!("{expand:?}"));
    }
}
