//! API errors and their `Status` bodies, as kube-apiserver sends them.

use serde_json::{Value, json};

use super::Kind;

/// One field violation, as `metav1.StatusCause`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCause {
    /// `FieldValueRequired`, `FieldValueInvalid`, ...
    pub reason: &'static str,
    pub field: String,
    /// Full message, apiserver style: `spec.issuerRef.name: Required value`.
    pub message: String,
}

impl FieldCause {
    pub fn required(field: &str) -> FieldCause {
        FieldCause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("{field}: Required value"),
        }
    }
    pub fn invalid(field: &str, value: &str, detail: &str) -> FieldCause {
        FieldCause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("{field}: Invalid value: \"{value}\": {detail}"),
        }
    }
    pub fn not_supported(field: &str, value: &str, detail: &str) -> FieldCause {
        FieldCause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("{field}: Unsupported value: \"{value}\": {detail}"),
        }
    }
    pub fn forbidden(field: &str, detail: &str) -> FieldCause {
        FieldCause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("{field}: Forbidden: {detail}"),
        }
    }
    pub fn duplicate(field: &str, value: &str) -> FieldCause {
        FieldCause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("{field}: Duplicate value: {value}"),
        }
    }
    pub fn too_long(field: &str, detail: &str) -> FieldCause {
        FieldCause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("{field}: Too long: {detail}"),
        }
    }
    pub fn too_many(field: &str, n: u64, max: u64) -> FieldCause {
        FieldCause {
            reason: "FieldValueTooMany",
            field: field.into(),
            message: format!("{field}: Too many: {n}: must have at most {max} items"),
        }
    }
}

/// API errors, each with the HTTP code and the `Status` body kube-apiserver would send.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error("{kind} \"{name}\" is invalid: {}", join_causes(causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<FieldCause>,
    },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        resource: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    /// A path nothing is served at: a group/version or resource the configured version does not
    /// serve (or serves but has switched off), or no API path at all.
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    Internal(String),
    /// A fault injected by a test.
    #[error("injected fault: HTTP {code}")]
    Injected { code: u16 },
}

fn join_causes(causes: &[FieldCause]) -> String {
    let msgs: Vec<&str> = causes.iter().map(|c| c.message.as_str()).collect();
    if msgs.len() == 1 {
        msgs[0].to_string()
    } else {
        format!("[{}]", msgs.join(", "))
    }
}

/// The `reason` kube-apiserver uses for a status code.
fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

impl ApiError {
    pub fn status_code(&self) -> u16 {
        match self {
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::Invalid { .. } => 422,
            ApiError::Gone(_) => 410,
            ApiError::BadRequest(_) => 400,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::NotAcceptable(_) => 406,
            ApiError::Internal(_) => 500,
            ApiError::Injected { code } => *code,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            other => reason_for(other.status_code()),
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut details = serde_json::Map::new();
        match self {
            ApiError::AlreadyExists { resource, name }
            | ApiError::NotFound { resource, name }
            | ApiError::Conflict { resource, name, .. } => {
                let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
                details.insert("name".into(), json!(name));
                details.insert("group".into(), json!(group));
                details.insert("kind".into(), json!(plural));
            }
            ApiError::Invalid { kind, name, causes } => {
                let (k, group) = kind.split_once('.').unwrap_or((kind, ""));
                details.insert("name".into(), json!(name));
                details.insert("group".into(), json!(group));
                details.insert("kind".into(), json!(k));
                let causes: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
                details.insert("causes".into(), json!(causes));
            }
            _ => {}
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.status_code(),
        });
        // kube-apiserver's unknown-path 404 carries empty details; other detail-less errors
        // carry none.
        if !details.is_empty() || matches!(self, ApiError::NoRoute) {
            status["details"] = Value::Object(details);
        }
        status
    }

    pub(super) fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError::NotFound {
            resource: kind.qualified_resource(),
            name: name.into(),
        }
    }

    pub(super) fn conflict(kind: Kind, name: &str) -> ApiError {
        ApiError::Conflict {
            resource: kind.qualified_resource(),
            name: name.into(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        }
    }

    pub(super) fn invalid_options(message: &str) -> ApiError {
        ApiError::Invalid {
            kind: "PatchOptions.meta.k8s.io".into(),
            name: String::new(),
            causes: vec![FieldCause {
                reason: "FieldValueRequired",
                field: "fieldManager".into(),
                message: message.into(),
            }],
        }
    }

    pub(super) fn invalid(kind: Kind, name: &str, causes: Vec<FieldCause>) -> ApiError {
        ApiError::Invalid {
            kind: kind.qualified_kind(),
            name: name.into(),
            causes,
        }
    }
}
