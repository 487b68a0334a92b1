//! The operator's view of a node, against the real `certvol` binary: `certvol inspect` over a
//! live data root, and NodeGetVolumeStats as kubelet polls it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use certvol_driver::demo::kubelet::{Pod, volume_id};
use certvol_e2e::require_root;
use certvol_e2e::{Env, certvol_bin, read_volume, volume};
use certvol_proto::csi::v1 as csi;
use tonic::Code;

fn inspect(data_root: &Path, args: &[&str]) -> Output {
    Command::new(certvol_bin())
        .arg("inspect")
        .arg("--data-root")
        .arg(data_root)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run certvol inspect")
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "certvol inspect failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

#[tokio::test]
async fn inspect_lists_what_the_pods_really_hold() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let web = Pod::new("shop", "web-0");
    let api = Pod::new("billing", "api-0");
    let vol = volume([("csi.certvol.io/common-name", "${POD_NAME}")]);
    let web_target = kubelet.publish(&web, &vol).await.expect("publish web");
    kubelet.publish(&api, &vol).await.expect("publish api");
    let web_files = read_volume(&web_target).expect("web volume");
    let web_id = volume_id(&web.uid, &vol.name);

    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&inspect(&env.data_root, &["--output", "json"])))
            .expect("inspect prints JSON");
    let list = json.as_array().expect("a JSON array");
    assert_eq!(list.len(), 2, "{json:#}");
    let entry = list
        .iter()
        .find(|v| v["volume_id"] == web_id.as_str())
        .expect("web volume listed");
    assert_eq!(entry["pod_namespace"], "shop");
    assert_eq!(entry["pod_name"], "web-0");
    assert_eq!(entry["issuer"], "local");
    assert_eq!(entry["issuer_name"], "local");
    assert_eq!(entry["common_name"], "web-0");
    assert_eq!(entry["dns_names"], serde_json::json!(["web-0.shop.svc"]));
    assert_eq!(entry["serial"], web_files.leaf.serial_hex.as_str());
    assert_eq!(
        entry["not_after"],
        rfc3339(web_files.leaf.not_after).as_str()
    );
    assert_eq!(entry["phase"], "published");
    assert_eq!(entry["failures"], 0);
    assert_eq!(entry["source"], "certificate", "read from the served file");
    let next = entry["next_renewal"].as_str().expect("next renewal");
    assert!(
        next < entry["not_after"].as_str().unwrap_or_default(),
        "renewal {next} is before expiry"
    );

    // The table has a header and one line per volume, and never a key.
    let table = stdout_of(&inspect(&env.data_root, &[]));
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("shop/web-0") && table.contains("billing/api-0"),
        "{table}"
    );
    assert!(!table.contains("PRIVATE KEY"), "{table}");
    // Shown with --nocapture: the sample output quoted in the docs.
    println!("$ certvol inspect\n{table}");

    // One volume in detail, by pod and by id prefix.
    let detail = stdout_of(&inspect(&env.data_root, &["shop/web-0"]));
    for want in [
        format!("Volume:         {web_id}"),
        format!("Target:         {}", web_target.display()),
        format!("Not after:      {}", rfc3339(web_files.leaf.not_after)),
        "Revision:       1".to_string(),
        "Key algorithm:  ECDSA P-256".to_string(),
        "Files:          tls.crt (certificate), tls.key (key), ca.crt (CA)".to_string(),
    ] {
        assert!(detail.contains(&want), "{want:?} in\n{detail}");
    }
    assert!(!detail.contains("PRIVATE KEY"), "{detail}");
    println!("$ certvol inspect shop/web-0\n{detail}");
    let state = env.state(&web, &vol).expect("state");
    let requests = &state.requests;
    assert!(
        requests.iter().all(|r| detail.contains(r.as_str())),
        "{requests:?} in\n{detail}"
    );
    let by_prefix = stdout_of(&inspect(&env.data_root, &[&web_id[..20]]));
    assert_eq!(by_prefix, detail);

    // Unknown volumes and data roots fail with a message, not an empty answer.
    let out = inspect(&env.data_root, &["csi-does-not-exist"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no volume matches \"csi-does-not-exist\""),
        "{err}"
    );
    let missing = env.path().join("no-such-root");
    let out = inspect(&missing, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists(), "inspect must not create a data root");
}

#[tokio::test]
async fn volume_stats_report_tmpfs_usage_and_a_valid_certificate() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    let pod = Pod::new("shop", "web-0");
    let vol = volume([]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let files = read_volume(&target).expect("volume");
    let id = volume_id(&pod.uid, &vol.name);

    let caps = kubelet
        .node()
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    let rpcs: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| c.r#type.as_ref())
        .map(|csi::node_service_capability::Type::Rpc(r)| r.r#type)
        .collect();
    use csi::node_service_capability::rpc::Type as Rpc;
    assert!(rpcs.contains(&(Rpc::GetVolumeStats as i32)), "{rpcs:?}");
    assert!(rpcs.contains(&(Rpc::VolumeCondition as i32)), "{rpcs:?}");

    let stats = |volume_id: &str, path: &str| {
        let mut node = kubelet.node();
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: volume_id.into(),
            volume_path: path.into(),
            staging_target_path: String::new(),
        };
        async move { node.node_get_volume_stats(req).await }
    };
    let resp = stats(&id, &target.display().to_string())
        .await
        .expect("stats")
        .into_inner();
    let condition = resp.volume_condition.expect("condition");
    assert!(!condition.abnormal, "{}", condition.message);
    assert_eq!(
        condition.message,
        format!("certificate valid until {}", rfc3339(files.leaf.not_after))
    );
    let usage = |unit: csi::volume_usage::Unit| {
        resp.usage
            .iter()
            .find(|u| u.unit == unit as i32)
            .cloned()
            .expect("usage")
    };
    let bytes = usage(csi::volume_usage::Unit::Bytes);
    // The tmpfs is 4Mi by default and holds a key, a certificate and a CA.
    assert_eq!(bytes.total, 4 << 20, "{bytes:?}");
    assert!(bytes.used > 0 && bytes.available > 0, "{bytes:?}");
    assert!(bytes.used + bytes.available <= bytes.total, "{bytes:?}");
    let inodes = usage(csi::volume_usage::Unit::Inodes);
    assert!(inodes.total > 0 && inodes.used > 0, "{inodes:?}");

    let err = stats("csi-unknown", &target.display().to_string())
        .await
        .expect_err("unknown volume");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = stats(&id, "/var/lib/kubelet/pods/other/mount")
        .await
        .expect_err("wrong path");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = stats(&id, "").await.expect_err("no path");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("volume_path"), "{err}");

    // After unpublish the volume is gone for stats too.
    kubelet.unpublish(&pod, &vol).await.expect("unpublish");
    let err = stats(&id, &target.display().to_string())
        .await
        .expect_err("unpublished volume");
    assert_eq!(err.code(), Code::NotFound, "{err}");
}
