//! A CSI client that calls a node plugin the way kubelet does for inline ephemeral volumes: the
//! same volume ids, target paths, capability and volume context (see
//! `shared/reference/kubelet-csi.md`). The demo and the end-to-end harness use it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use certvol_proto::csi::v1 as csi;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod a volume belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
    /// `securityContext.fsGroup`: passed as `volume_mount_group`.
    pub fs_group: Option<u32>,
    /// The service-account token kubelet requests for the pod when the CSIDriver lists
    /// `tokenRequests` (audience ""), passed as `csi.storage.k8s.io/serviceAccount.tokens`.
    pub token: Option<String>,
}

impl Pod {
    /// A pod with a uid derived from its name (stable for tests).
    pub fn new(namespace: &str, name: &str) -> Pod {
        let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        let h = hex::encode(&digest[..16]);
        Pod {
            name: name.into(),
            namespace: namespace.into(),
            uid: format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ),
            service_account: "default".into(),
            fs_group: None,
            token: None,
        }
    }
}

/// An inline CSI volume from a pod spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineVolume {
    /// The volume's name in the pod spec.
    pub name: String,
    pub read_only: bool,
    pub attributes: BTreeMap<String, String>,
    /// The data of the Secret named by the volume's `nodePublishSecretRef`; kubelet reads it
    /// from the API server and sends it as NodePublishVolumeRequest.secrets.
    pub secrets: BTreeMap<String, String>,
}

impl InlineVolume {
    pub fn new<'a>(name: &str, attributes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        InlineVolume {
            name: name.into(),
            read_only: true,
            attributes: attributes
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secrets: BTreeMap::new(),
        }
    }

    /// The same volume with a `nodePublishSecretRef` whose Secret holds `data`.
    pub fn with_secret<'a>(mut self, data: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.secrets = data
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }
}

/// kubelet's volume handle for an inline volume: `csi-` + hex(sha256(pod uid + volume name)).
pub fn volume_id(pod_uid: &str, volume_name: &str) -> String {
    let digest = Sha256::digest(format!("{pod_uid}{volume_name}").as_bytes());
    format!("csi-{}", hex::encode(digest))
}

/// Acts as kubelet towards one CSI socket.
#[derive(Clone, Debug)]
pub struct Kubelet {
    pods_dir: PathBuf,
    identity: IdentityClient<Channel>,
    node: NodeClient<Channel>,
}

impl Kubelet {
    /// Connects lazily to `socket`; `pods_dir` plays `/var/lib/kubelet/pods`.
    pub fn connect(socket: &Path, pods_dir: &Path) -> Result<Kubelet, tonic::transport::Error> {
        let socket = socket.to_path_buf();
        // Every connection goes to the socket; the URI only sets `:authority`, which kubelet
        // (1.26+) and the CSI sidecars send as "localhost".
        let channel =
            Endpoint::try_from("http://localhost")?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }));
        Ok(Kubelet {
            pods_dir: pods_dir.to_path_buf(),
            identity: IdentityClient::new(channel.clone()),
            node: NodeClient::new(channel),
        })
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        self.identity.clone()
    }

    pub fn node(&self) -> NodeClient<Channel> {
        self.node.clone()
    }

    /// Waits until the plugin answers Probe with ready, as kubelet's plugin watcher and the
    /// livenessprobe sidecar do.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), tonic::Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = tonic::Status::unavailable("not probed yet");
        while tokio::time::Instant::now() < deadline {
            match self.identity().probe(csi::ProbeRequest {}).await {
                Ok(resp) if resp.get_ref().ready == Some(true) => return Ok(()),
                Ok(_) => last = tonic::Status::unavailable("probe says not ready"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    /// Where kubelet asks for the volume: `<pods>/<uid>/volumes/kubernetes.io~csi/<name>/mount`.
    pub fn target_path(&self, pod: &Pod, volume: &InlineVolume) -> PathBuf {
        self.pods_dir
            .join(&pod.uid)
            .join("volumes/kubernetes.io~csi")
            .join(&volume.name)
            .join("mount")
    }

    /// The NodePublishVolume request kubelet sends (CSIDriver with podInfoOnMount: true).
    pub fn publish_request(
        &self,
        pod: &Pod,
        volume: &InlineVolume,
    ) -> csi::NodePublishVolumeRequest {
        use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
        let mut context: HashMap<String, String> = volume.attributes.clone().into_iter().collect();
        context.insert("csi.storage.k8s.io/pod.name".into(), pod.name.clone());
        context.insert(
            "csi.storage.k8s.io/pod.namespace".into(),
            pod.namespace.clone(),
        );
        context.insert("csi.storage.k8s.io/pod.uid".into(), pod.uid.clone());
        context.insert(
            "csi.storage.k8s.io/serviceAccount.name".into(),
            pod.service_account.clone(),
        );
        context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
        if let Some(token) = &pod.token {
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            let expires = expires
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            context.insert(
                "csi.storage.k8s.io/serviceAccount.tokens".into(),
                serde_json::json!({"": {"token": token, "expirationTimestamp": expires}})
                    .to_string(),
            );
        }
        csi::NodePublishVolumeRequest {
            volume_id: volume_id(&pod.uid, &volume.name),
            publish_context: HashMap::new(),
            staging_target_path: String::new(),
            target_path: self.target_path(pod, volume).display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume {
                    fs_type: String::new(),
                    mount_flags: Vec::new(),
                    volume_mount_group: pod.fs_group.map(|g| g.to_string()).unwrap_or_default(),
                })),
            }),
            readonly: volume.read_only,
            secrets: volume.secrets.clone().into_iter().collect(),
            volume_context: context,
        }
    }

    /// Sets up the volume dir as kubelet does (parent 0750 with `vol_data.json`), then publishes.
    pub async fn publish(
        &self,
        pod: &Pod,
        volume: &InlineVolume,
    ) -> Result<PathBuf, tonic::Status> {
        let target = self.target_path(pod, volume);
        if let Some(parent) = target.parent() {
            prepare_parent(parent, pod, volume)
                .map_err(|e| tonic::Status::internal(format!("kubelet emulator: {e}")))?;
        }
        self.node()
            .node_publish_volume(self.publish_request(pod, volume))
            .await?;
        Ok(target)
    }

    /// Unpublishes, then removes `vol_data.json` and the parent as kubelet does.
    pub async fn unpublish(&self, pod: &Pod, volume: &InlineVolume) -> Result<(), tonic::Status> {
        let target = self.target_path(pod, volume);
        self.node()
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: volume_id(&pod.uid, &volume.name),
                target_path: target.display().to_string(),
            })
            .await?;
        if let Some(parent) = target.parent() {
            let _ = std::fs::remove_file(parent.join("vol_data.json"));
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}

fn prepare_parent(parent: &Path, pod: &Pod, volume: &InlineVolume) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(parent)?;
    let data = serde_json::json!({
        "driverName": volume.attributes.get("driver").cloned().unwrap_or_default(),
        "volumeHandle": volume_id(&pod.uid, &volume.name),
        "specVolID": volume.name,
        "volumeLifecycleMode": "Ephemeral",
    });
    std::fs::write(parent.join("vol_data.json"), data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn volume_ids_and_paths_look_like_kubelets() {
        let pod = Pod::new("default", "web-0");
        let id = volume_id(&pod.uid, "tls");
        assert_eq!(id.len(), 68);
        assert!(id.starts_with("csi-"));
        let k = Kubelet::connect(
            Path::new("/nonexistent.sock"),
            Path::new("/var/lib/kubelet/pods"),
        );
        let k = k.unwrap();
        let vol = InlineVolume::new("tls", []);
        assert_eq!(
            k.target_path(&pod, &vol),
            PathBuf::from(format!(
                "/var/lib/kubelet/pods/{}/volumes/kubernetes.io~csi/tls/mount",
                pod.uid
            ))
        );
        let req = k.publish_request(&pod, &vol);
        assert_eq!(req.volume_context["csi.storage.k8s.io/ephemeral"], "true");
        assert_eq!(req.volume_context["csi.storage.k8s.io/pod.name"], "web-0");
        assert!(req.readonly);
        assert!(
            req.secrets.is_empty(),
            "no nodePublishSecretRef, no secrets"
        );

        // With nodePublishSecretRef, the Secret's data travels beside the context, not in it.
        let vol = vol.with_secret([("pkcs12-password", "s3cret")]);
        let req = k.publish_request(&pod, &vol);
        assert_eq!(req.secrets.len(), 1);
        assert_eq!(req.secrets["pkcs12-password"], "s3cret");
        assert!(!req.volume_context.values().any(|v| v.contains("s3cret")));
    }
}
