//! Wire-compatibility tests: bytes are assembled by hand from protobuf
//! tags and lengths (not produced by prost), so a wrong field number, type or
//! name in `csi.proto` shows up as a decode mismatch instead of passing a
//! prost-to-prost round trip.
//!
//! Key byte = (field_number << 3) | wire_type, with wire type 0 = varint and
//! 2 = length-delimited (strings, messages, map entries).

use certvol_proto::csi::v1::{
    GetPluginInfoResponse, NodeExpandVolumeResponse, NodeGetCapabilitiesResponse,
    NodeGetInfoResponse, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodeServiceCapability, NodeUnpublishVolumeRequest, ProbeResponse, VolumeCondition, VolumeUsage,
    identity_server, node_server, node_service_capability,
    volume_capability::{AccessType, MountVolume, access_mode::Mode},
    volume_usage,
};
use prost::Message;

/// Protobuf base-128 varint, written here so the test does not depend on
/// prost's encoder for the bytes it checks prost against.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// A length-delimited field: key byte, varint length, payload.
fn ld(key: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![key];
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// One `map<string, string>` entry: an embedded message with key = field 1
/// (0x0A) and value = field 2 (0x12), carried in the map's own field `key`.
fn map_entry(key: u8, k: &str, v: &str) -> Vec<u8> {
    let mut entry = ld(0x0A, k.as_bytes());
    entry.extend(ld(0x12, v.as_bytes()));
    ld(key, &entry)
}

const VOLUME_ID: &str = "csi-9f2a6c0d4e1b7a35c8e0d2f4a6b8c0e2d4f6a8b0c2e4d6f8a0b2c4e6d8f0a2b4";
const TARGET_PATH: &str = "/var/lib/kubelet/pods/6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f/volumes/kubernetes.io~csi/tls/mount";
const POD_UID: &str = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f";

/// What kubelet sends for a CSI ephemeral inline volume in a pod with
/// `fsGroup: 2000` and `readOnly: true`, fields in the order Go's encoder
/// writes them (ascending field number; empty fields omitted).
fn kubelet_publish_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    // field 1 volume_id (string)
    b.extend(ld(0x0A, VOLUME_ID.as_bytes()));
    // field 4 target_path (string); 2 publish_context and 3
    // staging_target_path are empty for a driver without STAGE_UNSTAGE.
    b.extend(ld(0x22, TARGET_PATH.as_bytes()));
    // field 5 volume_capability (message), written out in full:
    b.extend_from_slice(&[
        0x2A, 0x0C, // field 5, length 12
        0x12, 0x06, //   VolumeCapability field 2 `mount` (MountVolume), length 6
        0x1A, 0x04, b'2', b'0', b'0',
        b'0', //     MountVolume field 3 volume_mount_group = "2000"
        0x1A, 0x02, //   VolumeCapability field 3 `access_mode`, length 2
        0x08, 0x01, //     AccessMode field 1 mode = 1 (SINGLE_NODE_WRITER)
    ]);
    // field 6 readonly (bool varint) = true
    b.extend_from_slice(&[0x30, 0x01]);
    // field 8 volume_context (map<string,string>), one entry per field occurrence
    b.extend(map_entry(0x42, "csi.storage.k8s.io/ephemeral", "true"));
    b.extend(map_entry(0x42, "csi.storage.k8s.io/pod.name", "web-0"));
    b.extend(map_entry(0x42, "csi.storage.k8s.io/pod.namespace", "shop"));
    b.extend(map_entry(0x42, "csi.storage.k8s.io/pod.uid", POD_UID));
    b.extend(map_entry(
        0x42,
        "csi.storage.k8s.io/serviceAccount.name",
        "web",
    ));
    b
}

#[test]
fn decodes_kubelet_node_publish_volume_request() {
    let req = NodePublishVolumeRequest::decode(kubelet_publish_bytes().as_slice())
        .expect("kubelet-shaped bytes must decode");

    assert_eq!(req.volume_id, VOLUME_ID);
    assert_eq!(req.target_path, TARGET_PATH);
    assert!(req.readonly);
    assert!(req.staging_target_path.is_empty());
    assert!(req.publish_context.is_empty());
    assert!(req.secrets.is_empty());

    let cap = req.volume_capability.expect("volume_capability present");
    assert_eq!(
        cap.access_mode.expect("access_mode present").mode(),
        Mode::SingleNodeWriter
    );
    match cap.access_type {
        Some(AccessType::Mount(MountVolume {
            fs_type,
            mount_flags,
            volume_mount_group,
        })) => {
            assert_eq!(volume_mount_group, "2000");
            assert!(fs_type.is_empty());
            assert!(mount_flags.is_empty());
        }
        other => panic!("expected a mount access type, got {other:?}"),
    }

    let ctx = &req.volume_context;
    assert_eq!(ctx.len(), 5);
    assert_eq!(
        ctx.get("csi.storage.k8s.io/ephemeral").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        ctx.get("csi.storage.k8s.io/pod.name").map(String::as_str),
        Some("web-0")
    );
    assert_eq!(
        ctx.get("csi.storage.k8s.io/pod.namespace")
            .map(String::as_str),
        Some("shop")
    );
    assert_eq!(
        ctx.get("csi.storage.k8s.io/pod.uid").map(String::as_str),
        Some(POD_UID)
    );
    assert_eq!(
        ctx.get("csi.storage.k8s.io/serviceAccount.name")
            .map(String::as_str),
        Some("web")
    );
}

#[test]
fn publish_request_with_block_access_and_secrets_decodes() {
    let mut b = Vec::new();
    b.extend(ld(0x0A, b"vol-blk")); // field 1 volume_id
    b.extend(map_entry(0x12, "attach", "lun0")); // field 2 publish_context
    b.extend(ld(0x1A, b"/stage/vol-blk")); // field 3 staging_target_path
    b.extend(ld(0x22, b"/pub/vol-blk")); // field 4 target_path
    b.extend_from_slice(&[
        0x2A, 0x06, // field 5 volume_capability, length 6
        0x0A, 0x00, //   field 1 `block` (empty BlockVolume)
        0x1A, 0x02, 0x08, 0x07, //   access_mode.mode = 7 (SINGLE_NODE_MULTI_WRITER)
    ]);
    b.extend(map_entry(0x3A, "token", "s3cr3t")); // field 7 secrets

    let req = NodePublishVolumeRequest::decode(b.as_slice()).expect("decode");
    assert_eq!(req.volume_id, "vol-blk");
    assert_eq!(
        req.publish_context.get("attach").map(String::as_str),
        Some("lun0")
    );
    assert_eq!(req.staging_target_path, "/stage/vol-blk");
    assert_eq!(req.target_path, "/pub/vol-blk");
    assert!(!req.readonly);
    assert_eq!(req.secrets.get("token").map(String::as_str), Some("s3cr3t"));
    let cap = req.volume_capability.expect("capability");
    assert!(matches!(cap.access_type, Some(AccessType::Block(_))));
    assert_eq!(
        cap.access_mode.expect("mode").mode(),
        Mode::SingleNodeMultiWriter
    );
}

#[test]
fn fields_from_a_newer_spec_are_skipped_not_rejected() {
    // A future CO may send fields this proto does not know; proto3 requires
    // them to be ignored so old drivers keep working.
    let mut b = ld(0x0A, b"vol-1");
    // field 31 wire type 2 (unknown); key 250 needs a 2-byte varint
    b.extend_from_slice(&[0xFA, 0x01, 0x06]);
    b.extend_from_slice(b"future");
    b.extend_from_slice(&[0x78, 0x2A]); // field 15 varint (unknown) = 42
    b.extend(ld(0x12, b"/mnt/t"));

    let req = NodeUnpublishVolumeRequest::decode(b.as_slice()).expect("decode");
    assert_eq!(req.volume_id, "vol-1");
    assert_eq!(req.target_path, "/mnt/t");
}

/// field 1 volume_id "vol-1", field 2 target_path "/mnt/t".
const UNPUBLISH_BYTES: &[u8] = b"\x0a\x05vol-1\x12\x06/mnt/t";

#[test]
fn decodes_node_unpublish_volume_request() {
    let mut b = ld(0x0A, VOLUME_ID.as_bytes());
    b.extend(ld(0x12, TARGET_PATH.as_bytes()));
    let req = NodeUnpublishVolumeRequest::decode(b.as_slice()).expect("decode");
    assert_eq!(req.volume_id, VOLUME_ID);
    assert_eq!(req.target_path, TARGET_PATH);

    let short = NodeUnpublishVolumeRequest::decode(UNPUBLISH_BYTES).expect("decode");
    assert_eq!(short.volume_id, "vol-1");
    assert_eq!(short.target_path, "/mnt/t");
}

#[test]
fn probe_response_ready_is_a_bool_value_wrapper() {
    // field 1 (google.protobuf.BoolValue), length 2: { field 1 value = true }
    let ready = ProbeResponse::decode(&[0x0A, 0x02, 0x08, 0x01][..]).expect("decode");
    assert_eq!(ready.ready, Some(true));

    // An explicit `false` is an empty wrapper: "present but not ready",
    // which the CO must not confuse with an absent field ("ready").
    let not_ready = ProbeResponse::decode(&[0x0A, 0x00][..]).expect("decode");
    assert_eq!(not_ready.ready, Some(false));

    let unset = ProbeResponse::decode(&[][..]).expect("decode");
    assert_eq!(unset.ready, None);
}

#[test]
fn encodes_simple_messages_to_known_bytes() {
    let unpublish = NodeUnpublishVolumeRequest {
        volume_id: "vol-1".into(),
        target_path: "/mnt/t".into(),
    };
    assert_eq!(unpublish.encode_to_vec(), UNPUBLISH_BYTES);

    assert_eq!(
        ProbeResponse { ready: Some(true) }.encode_to_vec(),
        [0x0A, 0x02, 0x08, 0x01]
    );
    assert_eq!(
        ProbeResponse { ready: Some(false) }.encode_to_vec(),
        [0x0A, 0x00]
    );
    assert!(ProbeResponse { ready: None }.encode_to_vec().is_empty());

    let info = GetPluginInfoResponse {
        name: "certvol.example.io".into(),
        vendor_version: "0.1.0".into(),
        manifest: Default::default(),
    };
    // field 1 name (18 bytes), field 2 vendor_version (5 bytes)
    assert_eq!(
        info.encode_to_vec(),
        b"\x0a\x12certvol.example.io\x12\x050.1.0"
    );

    let node_info = NodeGetInfoResponse {
        node_id: "node-a".into(),
        max_volumes_per_node: 0,
        accessible_topology: None,
    };
    assert_eq!(node_info.encode_to_vec(), b"\x0a\x06node-a");
}

#[test]
fn encodes_node_capabilities_to_known_bytes() {
    use node_service_capability::{Rpc, Type, rpc::Type as RpcType};
    let caps = NodeGetCapabilitiesResponse {
        capabilities: vec![
            NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: RpcType::VolumeMountGroup as i32,
                })),
            },
            NodeServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: RpcType::GetVolumeStats as i32,
                })),
            },
        ],
    };
    assert_eq!(
        caps.encode_to_vec(),
        [
            0x0A, 0x04, // capabilities[0], length 4
            0x0A, 0x02, //   field 1 `rpc`, length 2
            0x08, 0x06, //     type = 6 (VOLUME_MOUNT_GROUP)
            0x0A, 0x04, // capabilities[1]
            0x0A, 0x02, //
            0x08, 0x02, //     type = 2 (GET_VOLUME_STATS)
        ]
    );
}

#[test]
fn encodes_volume_stats_and_expand_to_known_bytes() {
    let stats = NodeGetVolumeStatsResponse {
        usage: vec![VolumeUsage {
            available: 1,
            total: 2,
            used: 3,
            unit: volume_usage::Unit::Bytes as i32,
        }],
        volume_condition: Some(VolumeCondition {
            abnormal: false,
            message: "ok".into(),
        }),
    };
    assert_eq!(
        stats.encode_to_vec(),
        [
            0x0A, 0x08, // usage[0], length 8
            0x08, 0x01, //   available = 1
            0x10, 0x02, //   total = 2
            0x18, 0x03, //   used = 3
            0x20, 0x01, //   unit = BYTES
            0x12, 0x04, // volume_condition, length 4 (abnormal=false omitted)
            0x12, 0x02, b'o', b'k', // message = "ok"
        ]
    );

    let expand = NodeExpandVolumeResponse {
        capacity_bytes: 1 << 30,
    };
    // field 1 varint 2^30 = 0x80 0x80 0x80 0x80 0x04
    assert_eq!(expand.encode_to_vec(), [0x08, 0x80, 0x80, 0x80, 0x80, 0x04]);
}

#[test]
fn grpc_service_names_match_the_spec_package() {
    // kubelet dials "/csi.v1.Node/NodePublishVolume" etc.; a package or
    // service rename would make every call UNIMPLEMENTED.
    assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");
    assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");
}

#[test]
fn access_mode_and_capability_enum_numbers_match_the_spec() {
    use certvol_proto::csi::v1::plugin_capability::{service, volume_expansion};
    let modes = [
        (Mode::Unknown, 0),
        (Mode::SingleNodeWriter, 1),
        (Mode::SingleNodeReaderOnly, 2),
        (Mode::MultiNodeReaderOnly, 3),
        (Mode::MultiNodeSingleWriter, 4),
        (Mode::MultiNodeMultiWriter, 5),
        (Mode::SingleNodeSingleWriter, 6),
        (Mode::SingleNodeMultiWriter, 7),
    ];
    for (mode, n) in modes {
        assert_eq!(mode as i32, n, "{mode:?}");
    }
    assert_eq!(service::Type::ControllerService as i32, 1);
    assert_eq!(service::Type::VolumeAccessibilityConstraints as i32, 2);
    assert_eq!(service::Type::GroupControllerService as i32, 3);
    assert_eq!(volume_expansion::Type::Online as i32, 1);
    assert_eq!(volume_expansion::Type::Offline as i32, 2);
    // Unknown numbers from a newer CO must be reported as such, not mapped.
    assert!(Mode::try_from(8).is_err());
}
