//! Changing objects: status and other subresources, replace and patch, with the server's
//! metadata kept and the webhook's immutability rules applied.

use serde_json::{Value, json};

use super::Store;
use crate::apiserver::csr::{self, Subresource};
use crate::apiserver::{ApiError, EventType, FieldCause, Kind, meta, storage, trust, webhook};

impl Store {
    /// Status subresource update as a controller does it: `f` receives the whole current object
    /// and mutates its `.status` (changes anywhere else are discarded, as the status endpoint
    /// ignores them). Bumps resourceVersion, emits Modified, validates against the schema and the
    /// webhook's immutability rules (an Approved/Denied condition once set cannot change).
    pub fn update_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        self.modify(kind, namespace, name, true, |current| {
            let mut next = current.clone();
            f(&mut next);
            Ok(next)
        })
    }

    /// PUT semantics: `obj` replaces the stored object. With `status_only` only `.status` is
    /// taken from `obj` (the status subresource), otherwise everything but `.status`. A non-empty
    /// `metadata.resourceVersion` in `obj` must match the stored one (optimistic concurrency).
    pub fn replace(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        obj: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        self.modify(kind, namespace, name, status_only, |_| Ok(obj))
    }

    /// Read-modify-write under one lock, as the apiserver applies a PATCH: `f` turns the current
    /// object into the new one, which then goes through the same rules as [`Store::replace`].
    pub fn modify(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status_only: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let sub = if status_only {
            Subresource::Status
        } else {
            Subresource::Main
        };
        self.modify_sub(kind, namespace, name, sub, f)
    }

    /// [`Store::modify`] through a named endpoint: the main resource, `/status` or (for
    /// CertificateSigningRequests) `/approval`.
    pub fn modify_sub(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        sub: Subresource,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let status_only = sub == Subresource::Status;
        let namespace = if kind.namespaced() { namespace } else { "" };
        let mut inner = self.lock();
        if inner.conflicts_pending > 0 {
            inner.conflicts_pending -= 1;
            return Err(ApiError::conflict(kind, name));
        }
        let key = (kind, namespace.to_string(), name.to_string());
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        let mut obj = f(&old)?;
        if !obj.is_object() {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        if let Some(body_name) = obj.pointer("/metadata/name").and_then(Value::as_str)
            && body_name != name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let sent_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !sent_rv.is_empty()
            && sent_rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("")
        {
            return Err(ApiError::conflict(kind, name));
        }
        let mut new = if kind == Kind::CertificateSigningRequest {
            let mut n = csr::prepare_update(&old, &obj, sub);
            // Server-owned metadata survives any update (the strategy kept the rest as sent).
            if sub == Subresource::Main {
                keep_server_metadata(&old, &mut n);
            }
            n
        } else if sub == Subresource::Approval {
            return Err(ApiError::NotFound {
                resource: kind.qualified_resource(),
                name: format!("{name}/approval"),
            });
        } else if status_only {
            let mut n = old.clone();
            match obj.get_mut("status").map(Value::take) {
                Some(s) => n["status"] = s,
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            let mut n = obj.clone();
            // Server-owned metadata survives any PUT; so does status behind a status subresource.
            keep_server_metadata(&old, &mut n);
            if kind == Kind::CertificateRequest {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            // Events may be rewritten through the other Event API (stored as written); every
            // other kind keeps the version it was created with.
            if kind != Kind::Event || !n["apiVersion"].is_string() {
                n["apiVersion"] = old["apiVersion"].clone();
            }
            n["kind"] = old["kind"].clone();
            n
        };
        let mut causes = match new.get("metadata") {
            Some(m) => meta::validate(m),
            None => Vec::new(),
        };
        if matches!(kind, Kind::ClusterTrustBundle | Kind::CsiDriver) {
            causes.retain(|c| c.field != "metadata.name");
        }
        if trust::handles(kind) {
            causes.extend(trust::admit(kind, Some(&old), &mut new)?);
        }
        if kind == Kind::CertificateRequest {
            causes.extend(self.schema.prune_and_validate(&mut new));
            causes.extend(webhook::validate_update(&old, &new));
        }
        if kind == Kind::CertificateSigningRequest {
            causes.extend(csr::validate_update(&old, &new));
        }
        if kind == Kind::CsiDriver {
            causes.extend(storage::admit_csidriver(&mut new)?);
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let had = old
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array);
            let added = new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|f| !had.is_some_and(|h| h.contains(f)));
            if added {
                causes.push(FieldCause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, name, causes));
        }
        if new == old {
            // A no-op update does not bump the resourceVersion or wake watchers.
            return Ok(old);
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            // The last finalizer is gone: the pending deletion completes now.
            inner.objects.insert(key.clone(), new);
            return self
                .delete_locked(&mut inner, key, false)
                .ok_or_else(|| ApiError::not_found(kind, name));
        }
        inner.rv += 1;
        new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        if old.get("spec") != new.get("spec") {
            let g = old["metadata"]["generation"].as_u64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        inner.objects.insert(key, new.clone());
        self.emit(&mut inner, kind, EventType::Modified, new.clone());
        Ok(new)
    }
}

/// Restores the metadata only the server sets on `new` from `old`: identity and bookkeeping
/// fields, and the deletion marks that only a DELETE sets (an update can neither set nor clear
/// them). A field `old` lacks is removed.
fn keep_server_metadata(old: &Value, new: &mut Value) {
    const SERVER_OWNED: [&str; 8] = [
        "uid",
        "creationTimestamp",
        "generation",
        "name",
        "namespace",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ];
    let Some(meta) = new["metadata"].as_object_mut() else {
        return;
    };
    for f in SERVER_OWNED {
        match old["metadata"].get(f) {
            Some(v) => {
                meta.insert(f.into(), v.clone());
            }
            None => {
                meta.remove(f);
            }
        }
    }
}
