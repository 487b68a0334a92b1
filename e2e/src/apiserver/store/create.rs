//! Creating objects: admission, generated names, server-set metadata.

use serde_json::{Value, json};

use super::{Store, now_rfc3339};
use crate::apiserver::{
    ApiError, EventType, FieldCause, Identity, Kind, csr, meta, storage, trust, webhook,
};

impl Store {
    pub fn create(&self, kind: Kind, namespace: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_as(kind, namespace, obj, &Identity::default_service_account())
    }

    /// Create as `who` (the identity the webhook records in a CertificateRequest's spec).
    pub fn create_as(
        &self,
        kind: Kind,
        namespace: &str,
        mut obj: Value,
        who: &Identity,
    ) -> Result<Value, ApiError> {
        // Cluster-scoped objects have no namespace: the apiserver clears one sent in the body.
        let namespace = if kind.namespaced() { namespace } else { "" };
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        };
        // Written in-process without an apiVersion: the version a client would write through.
        // One the server does not serve cannot be written (a client would get the 404).
        if !map.contains_key("apiVersion") {
            let preferred = self
                .apis
                .preferred_api_version(kind)
                .ok_or(ApiError::NoRoute)?;
            map.insert("apiVersion".into(), json!(preferred));
        }
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if self.apis.serves_kind_in(kind, v) => {}
            _ => return Err(ApiError::NoRoute),
        }
        match map.get("kind").and_then(Value::as_str) {
            None => {
                map.insert("kind".into(), json!(kind.kind_name()));
            }
            Some(k) if k == kind.kind_name() => {}
            Some(k) => {
                return Err(ApiError::BadRequest(format!(
                    "the kind of the provided object ({k}) does not match the resource ({})",
                    kind.plural()
                )));
            }
        }
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
        match meta.get("namespace").and_then(Value::as_str) {
            // Cluster-scoped objects have no namespace: the apiserver clears whatever was sent.
            _ if !kind.namespaced() => {
                meta.remove("namespace");
            }
            None | Some("") => {
                meta.insert("namespace".into(), json!(namespace));
            }
            Some(ns) if ns == namespace => {}
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
        }
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::Internal(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        for server_set in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(server_set);
        }
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .map(str::to_string);
        let name_given = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let mut inner = self.lock();
        if !name_given {
            match generate {
                Some(mut prefix) if !prefix.is_empty() => {
                    // As the apiserver does: the prefix is cut so prefix + suffix fit 63.
                    while prefix.len() > 58 {
                        prefix.pop();
                    }
                    let suffix = random_suffix(&mut inner.uid_counter);
                    meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        vec![FieldCause::required("metadata.name")],
                    ));
                }
            }
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut causes = meta::validate(&Value::Object(meta.clone()));
        if matches!(kind, Kind::ClusterTrustBundle | Kind::CsiDriver) {
            // Their names follow their own rules (signer prefixes contain ':'; CSI driver names
            // allow '_'), checked by admission.
            causes.retain(|c| c.field != "metadata.name");
        }
        if kind == Kind::CertificateRequest {
            // The status subresource makes create ignore any status the client sent.
            map.remove("status");
            webhook::mutate_create(&mut obj, who);
            causes.extend(self.schema.prune_and_validate(&mut obj));
            if causes.is_empty() {
                causes.extend(webhook::validate_create(&obj));
            }
        }
        if trust::handles(kind) {
            causes.extend(trust::admit(kind, None, &mut obj)?);
        }
        if kind == Kind::CertificateSigningRequest {
            csr::prepare_create(&mut obj, who);
            causes.extend(csr::validate(&obj));
        }
        if kind == Kind::CsiDriver {
            causes.extend(storage::admit_csidriver(&mut obj)?);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, &name, causes));
        }
        let namespace = if kind.namespaced() { namespace } else { "" };
        let key = (kind, namespace.to_string(), name.clone());
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                resource: kind.qualified_resource(),
                name,
            });
        }
        inner.uid_counter += 1;
        let uid = uuid_like(inner.uid_counter);
        inner.rv += 1;
        let rv = inner.rv;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid);
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(1);
        inner.objects.insert(key, obj.clone());
        self.emit(&mut inner, kind, EventType::Added, obj.clone());
        Ok(obj)
    }
}

fn uuid_like(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (h >> 32) as u32,
        (h >> 16) as u16,
        (h & 0xfff) as u16,
        (n & 0xfff) as u16,
        n & 0xffff_ffff_ffff
    )
}

/// The 5-character suffix generateName appends (apiserver's alphabet avoids vowels and lookalikes).
fn random_suffix(counter: &mut u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    *counter += 1;
    let mut x = counter.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ rand::random::<u64>();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}
