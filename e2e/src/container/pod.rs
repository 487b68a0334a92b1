//! The certvol DaemonSet's pod as the chart renders it, read the way kubelet reads a pod spec:
//! the certvol container's command, args, env (downward-API fields resolved), security context,
//! volume mounts and probes; the pod's hostPath volumes and its service-account token (the pod's
//! automount, or a projected volume shaped like the one automount adds); the registrar's
//! registration path; and the CSIDriver object kubelet consults on every publish. Nothing here is a copy of the chart:
//! a change to the templates changes what the container tier runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, Volume};
use k8s_openapi::api::storage::v1::CSIDriver;
use serde_json::Value;

use super::runtime::Propagation;

/// A hostPath volume and where the certvol container mounts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPathMount {
    pub volume: String,
    /// `hostPath.path` on the node.
    pub host_path: PathBuf,
    /// `hostPath.type` (`Directory`, `DirectoryOrCreate`, ...; empty when unset).
    pub host_path_type: String,
    pub mount_path: PathBuf,
    pub propagation: Propagation,
    pub read_only: bool,
}

/// Where the certvol container finds its service-account credential: the files kubelet keeps up
/// to date (`token`, `ca.crt`, `namespace`), as automount or the chart's projected volume gives
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMount {
    /// The volume (`None`: the pod's automount, which kubelet adds to every container).
    pub volume: Option<String>,
    pub mount_path: PathBuf,
    pub read_only: bool,
    /// `serviceAccountToken.expirationSeconds` (automount: 3607).
    pub expiration_seconds: i64,
}

/// The directory in-cluster clients read the credential from.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// An HTTP probe of the certvol container, resolved to a port number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
}

/// What the CSIDriver object tells kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    pub name: String,
    pub pod_info_on_mount: bool,
    /// Audiences of `tokenRequests` ("" is the API server's default).
    pub token_audiences: Vec<String>,
    pub requires_republish: bool,
    /// The object as rendered, for an API stand-in to serve as the installed chart does.
    pub object: Value,
}

/// The certvol container of the rendered DaemonSet, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    pub namespace: String,
    pub service_account: String,
    /// The certvol container's API credential, if it gets one.
    pub token: Option<TokenMount>,
    /// Every container (init containers included) that gets the pod's service-account token,
    /// through automount or by mounting a volume holding it: the chart's least privilege says
    /// only `certvol`, and only in API modes.
    pub token_containers: Vec<String>,
    /// `command` if the pod spec sets one; else the image's entrypoint applies.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Literal values and downward-API references (`fieldRef.fieldPath`), in order.
    pub env: Vec<(String, EnvValue)>,
    pub read_only_root: bool,
    pub privileged: bool,
    pub mounts: Vec<HostPathMount>,
    pub readiness: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
    pub termination_grace_seconds: i64,
    /// `resources.limits.memory` in bytes: the container's memory cgroup limit, which also
    /// counts the tmpfs pages the container writes.
    pub memory_limit: Option<u64>,
    /// The socket path on the node that node-driver-registrar registers with kubelet
    /// (`--kubelet-registration-path`): what kubelet dials.
    pub registration_path: PathBuf,
    pub driver: DriverInfo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    Field(String),
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Result<&'a Value, String> {
    let mut found = objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind));
    match (found.next(), found.next()) {
        (Some(o), None) => Ok(o),
        (None, _) => Err(format!("the chart renders no {kind}")),
        (Some(_), Some(_)) => Err(format!("the chart renders more than one {kind}")),
    }
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> Result<&'a Container, String> {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("the DaemonSet has no container {name:?}"))
}

/// `--flag=value` of a container's args.
fn flag<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    c.args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
}

fn http_probe(c: &Container, probe: Option<&Probe>) -> Result<Option<HttpProbe>, String> {
    let Some(get) = probe.and_then(|p| p.http_get.as_ref()) else {
        return Ok(None);
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = match &get.port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("probe port {n}"))?,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe names port {name:?}, which the container lacks"))?,
    };
    Ok(Some(HttpProbe {
        path: get.path.clone().unwrap_or_else(|| "/".into()),
        port,
    }))
}

impl PodPlan {
    /// Reads the DaemonSet (container `certvol`, registrar `node-driver-registrar`) and the
    /// CSIDriver from the chart's objects. Volumes other than hostPath and the projected
    /// service-account volume ([`service_account_volume`]) are refused: the emulated runtime
    /// cannot provide them, and silently leaving one out would test less than the chart asks
    /// for.
    pub fn from_objects(objects: &[Value]) -> Result<PodPlan, String> {
        let ds: DaemonSet = serde_json::from_value(find(objects, "DaemonSet")?.clone())
            .map_err(|e| format!("DaemonSet: {e}"))?;
        let drv_object = find(objects, "CSIDriver")?.clone();
        let drv: CSIDriver =
            serde_json::from_value(drv_object.clone()).map_err(|e| format!("CSIDriver: {e}"))?;
        let pod = ds
            .spec
            .template
            .spec
            .ok_or("the DaemonSet has no pod spec")?;
        let c = container(&pod, "certvol")?;
        let registrar = container(&pod, "node-driver-registrar")?;

        let automount = pod.automount_service_account_token.unwrap_or(true);
        let mut token = automount.then(|| TokenMount {
            volume: None,
            mount_path: SERVICE_ACCOUNT_DIR.into(),
            read_only: true,
            expiration_seconds: 3607,
        });
        let mut token_containers = Vec::new();
        for other in pod.init_containers.iter().flatten().chain(&pod.containers) {
            let mounts_token = other.volume_mounts.iter().flatten().any(|m| {
                pod.volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == m.name)
                    .is_some_and(|v| service_account_volume(v).is_some())
            });
            if automount || mounts_token {
                token_containers.push(other.name.clone());
            }
        }

        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let vol = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .ok_or_else(|| format!("volumeMount {:?} names no volume", m.name))?;
            if let Some(expiration_seconds) = service_account_volume(vol) {
                if token.is_some() {
                    return Err(format!(
                        "volume {:?}: a second service-account token for the container",
                        vol.name
                    ));
                }
                token = Some(TokenMount {
                    volume: Some(vol.name.clone()),
                    mount_path: PathBuf::from(&m.mount_path),
                    read_only: m.read_only.unwrap_or(false),
                    expiration_seconds,
                });
                continue;
            }
            let host = vol.host_path.as_ref().ok_or_else(|| {
                format!(
                    "volume {:?} is not a hostPath volume; the emulated runtime provides only hostPath volumes and the projected service-account volume",
                    vol.name
                )
            })?;
            mounts.push(HostPathMount {
                volume: vol.name.clone(),
                host_path: PathBuf::from(&host.path),
                host_path_type: host.type_.clone().unwrap_or_default(),
                mount_path: PathBuf::from(&m.mount_path),
                propagation: Propagation::from_pod_spec(m.mount_propagation.as_deref())?,
                read_only: m.read_only.unwrap_or(false),
            });
        }

        let mut env = Vec::new();
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => EnvValue::Literal(v.clone()),
                (None, Some(from)) => match &from.field_ref {
                    Some(f) => EnvValue::Field(f.field_path.clone()),
                    None => return Err(format!("env {}: only fieldRef is emulated", e.name)),
                },
                (None, None) => EnvValue::Literal(String::new()),
                (Some(_), Some(_)) => return Err(format!("env {}: value and valueFrom", e.name)),
            };
            env.push((e.name.clone(), value));
        }
        if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err("envFrom is not emulated".into());
        }

        let sc = c.security_context.clone().unwrap_or_default();
        let registration_path = flag(registrar, "kubelet-registration-path")
            .ok_or("node-driver-registrar has no --kubelet-registration-path")?;
        let spec = drv.spec;
        Ok(PodPlan {
            namespace: ds.metadata.namespace.unwrap_or_else(|| "default".into()),
            service_account: pod
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            token,
            token_containers,
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            env,
            read_only_root: sc.read_only_root_filesystem.unwrap_or(false),
            privileged: sc.privileged.unwrap_or(false),
            mounts,
            readiness: http_probe(c, c.readiness_probe.as_ref())?,
            liveness: http_probe(c, c.liveness_probe.as_ref())?,
            termination_grace_seconds: pod.termination_grace_period_seconds.unwrap_or(30),
            memory_limit: c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("memory"))
                .map(|q| quantity_bytes(&q.0))
                .transpose()?,
            registration_path: PathBuf::from(registration_path),
            driver: DriverInfo {
                name: drv.metadata.name.unwrap_or_default(),
                pod_info_on_mount: spec.pod_info_on_mount.unwrap_or(false),
                token_audiences: spec
                    .token_requests
                    .iter()
                    .flatten()
                    .map(|t| t.audience.clone())
                    .collect(),
                requires_republish: spec.requires_republish.unwrap_or(false),
                object: drv_object,
            },
        })
    }

    /// The value of `--name=` in the certvol container's args.
    pub fn arg(&self, name: &str) -> Option<&str> {
        let prefix = format!("--{name}=");
        self.args
            .iter()
            .find_map(|a| a.strip_prefix(prefix.as_str()))
    }

    /// The container's environment as kubelet resolves it for a pod on `node`.
    pub fn resolve_env(
        &self,
        fields: &BTreeMap<&str, String>,
    ) -> Result<Vec<(String, String)>, String> {
        self.env
            .iter()
            .map(|(name, v)| match v {
                EnvValue::Literal(s) => Ok((name.clone(), s.clone())),
                EnvValue::Field(path) => fields
                    .get(path.as_str())
                    .map(|s| (name.clone(), s.clone()))
                    .ok_or_else(|| format!("env {name}: fieldRef {path} is not emulated")),
            })
            .collect()
    }

    /// The hostPath mount whose container path is `path`.
    pub fn mount_at(&self, path: &Path) -> Option<&HostPathMount> {
        self.mounts.iter().find(|m| m.mount_path == path)
    }
}

/// The token's `expirationSeconds` if `vol` is the projected volume automount adds
/// (`kube-api-access-*`): a service-account token for the API server's default audience at
/// `token`, `ca.crt` from the `kube-root-ca.crt` ConfigMap and the pod's namespace from the
/// downward API, nothing else. Those are the files the API stand-in writes for in-cluster
/// configuration ([`crate::apiserver::InClusterEnv`]).
pub fn service_account_volume(vol: &Volume) -> Option<i64> {
    let projected = vol.projected.as_ref()?;
    let sources = projected.sources.as_deref()?;
    let [token, ca, ns] = sources else {
        return None;
    };
    let t = token.service_account_token.as_ref()?;
    if t.path != "token" || t.audience.as_deref().is_some_and(|a| !a.is_empty()) {
        return None;
    }
    let cm = ca.config_map.as_ref()?;
    let ca_ok = cm.name == "kube-root-ca.crt"
        && matches!(cm.items.as_deref(), Some([i]) if i.key == "ca.crt" && i.path == "ca.crt");
    let ns_ok = matches!(
        ns.downward_api.as_ref().and_then(|d| d.items.as_deref()),
        Some([i]) if i.path == "namespace"
            && i.field_ref.as_ref().is_some_and(|f| f.field_path == "metadata.namespace")
    );
    (ca_ok && ns_ok).then_some(t.expiration_seconds.unwrap_or(3600))
}

/// The image's entrypoint, from the project's Dockerfile (`ENTRYPOINT ["..."]`): what runs when
/// the pod spec gives no `command`.
pub fn image_entrypoint(dockerfile: &str) -> Result<Vec<String>, String> {
    let line = dockerfile
        .lines()
        .rfind(|l| l.trim_start().starts_with("ENTRYPOINT"))
        .ok_or("the Dockerfile has no ENTRYPOINT")?;
    let json = line.trim_start().trim_start_matches("ENTRYPOINT").trim();
    serde_json::from_str(json).map_err(|e| format!("ENTRYPOINT is not exec form ({e}): {line}"))
}

/// A Kubernetes memory quantity (`128Mi`, `1G`, `134217728`) in bytes.
pub fn quantity_bytes(q: &str) -> Result<u64, String> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (digits, factor) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|d| (d, *f)))
        .unwrap_or((q, 1));
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| {
            format!(
                "memory quantity {q:?} is not emulated (integer with a binary or decimal suffix)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(quantity_bytes("128Mi"), Ok(128 << 20));
        assert_eq!(quantity_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(quantity_bytes("4096"), Ok(4096));
        assert!(quantity_bytes("1.5Gi").unwrap_err().contains("1.5Gi"));
    }

    #[test]
    fn entrypoint_is_the_last_exec_form() {
        let df = "FROM x\nENTRYPOINT [\"/old\"]\nFROM y\nENTRYPOINT [\"/usr/local/bin/certvol\"]\nCMD [\"node\"]\n";
        assert_eq!(
            image_entrypoint(df),
            Ok(vec!["/usr/local/bin/certvol".to_string()])
        );
        assert!(image_entrypoint("ENTRYPOINT /bin/sh -c x").is_err());
    }

    fn objects(volume: serde_json::Value) -> Vec<Value> {
        vec![
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                   "metadata": {"name": "csi.example"},
                   "spec": {"podInfoOnMount": true, "tokenRequests": [{"audience": ""}], "requiresRepublish": true}}),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                   "metadata": {"name": "d", "namespace": "ns"},
                   "spec": {"selector": {}, "template": {"spec": {
                       "containers": [
                           {"name": "certvol", "args": ["node", "--data-root=/d"],
                            "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                            "ports": [{"name": "metrics", "containerPort": 9402}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
                            "resources": {"limits": {"memory": "64Mi"}},
                            "securityContext": {"readOnlyRootFilesystem": true},
                            "volumeMounts": [{"name": "v", "mountPath": "/d", "mountPropagation": "Bidirectional"}]},
                           {"name": "node-driver-registrar", "args": ["--kubelet-registration-path=/k/csi.sock"]}],
                       "volumes": [volume]}}}}),
        ]
    }

    #[test]
    fn reads_the_pod_as_kubelet_does() {
        let plan = PodPlan::from_objects(&objects(
            json!({"name": "v", "hostPath": {"path": "/var/d", "type": "DirectoryOrCreate"}}),
        ))
        .unwrap();
        assert_eq!(plan.namespace, "ns");
        assert_eq!(plan.arg("data-root"), Some("/d"));
        assert!(plan.read_only_root && !plan.privileged);
        // No automountServiceAccountToken: false, so kubelet gives every container the token.
        assert_eq!(plan.token.as_ref().map(|t| t.volume.clone()), Some(None));
        assert_eq!(plan.token_containers, ["certvol", "node-driver-registrar"]);
        assert_eq!(
            plan.readiness,
            Some(HttpProbe {
                path: "/readyz".into(),
                port: 9402
            })
        );
        assert_eq!(plan.memory_limit, Some(64 << 20));
        assert_eq!(plan.registration_path, Path::new("/k/csi.sock"));
        assert_eq!(plan.mounts[0].propagation, Propagation::Bidirectional);
        assert_eq!(plan.mounts[0].host_path, Path::new("/var/d"));
        assert_eq!(plan.driver.token_audiences, vec![String::new()]);
        let fields = BTreeMap::from([("spec.nodeName", "n1".to_string())]);
        assert_eq!(
            plan.resolve_env(&fields),
            Ok(vec![("NODE_NAME".into(), "n1".into())])
        );
        assert!(plan.resolve_env(&BTreeMap::new()).is_err());
    }

    fn kube_api_access() -> serde_json::Value {
        json!({"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
    }

    /// The chart's shape: no automount, the projected volume in the certvol container only.
    fn with_projected_token(sidecar_mounts_it: bool) -> Vec<Value> {
        let mut objs = objects(json!({"name": "v", "hostPath": {"path": "/var/d"}}));
        let spec = &mut objs[1]["spec"]["template"]["spec"];
        spec["automountServiceAccountToken"] = json!(false);
        spec["volumes"]
            .as_array_mut()
            .unwrap()
            .push(kube_api_access());
        let mount =
            json!({"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true});
        spec["containers"][0]["volumeMounts"]
            .as_array_mut()
            .unwrap()
            .push(mount.clone());
        if sidecar_mounts_it {
            spec["containers"][1]["volumeMounts"] = json!([mount]);
        }
        objs
    }

    #[test]
    fn the_projected_token_reaches_the_certvol_container_only() {
        let plan = PodPlan::from_objects(&with_projected_token(false)).unwrap();
        assert_eq!(
            plan.token,
            Some(TokenMount {
                volume: Some("kube-api-access".into()),
                mount_path: SERVICE_ACCOUNT_DIR.into(),
                read_only: true,
                expiration_seconds: 3607,
            })
        );
        assert_eq!(plan.token_containers, ["certvol"]);
        assert_eq!(plan.mounts.len(), 1, "the token is not a hostPath mount");

        let plan = PodPlan::from_objects(&with_projected_token(true)).unwrap();
        assert_eq!(plan.token_containers, ["certvol", "node-driver-registrar"]);
    }

    #[test]
    fn a_projected_volume_unlike_automount_is_refused() {
        let mut objs = with_projected_token(false);
        let sources =
            &mut objs[1]["spec"]["template"]["spec"]["volumes"][1]["projected"]["sources"];
        sources[0]["serviceAccountToken"]["audience"] = json!("vault");
        let err = PodPlan::from_objects(&objs).unwrap_err();
        assert!(err.contains("not a hostPath volume"), "{err}");
    }

    #[test]
    fn refuses_volumes_it_cannot_provide() {
        let err =
            PodPlan::from_objects(&objects(json!({"name": "v", "emptyDir": {}}))).unwrap_err();
        assert!(err.contains("not a hostPath volume"), "{err}");
    }
}
