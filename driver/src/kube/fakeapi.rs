//! A Kubernetes API server for unit tests: a `kube::Client` whose every request is answered by
//! a function of the request (method, path, query, JSON body), so tests of the API-facing
//! modules script exactly the answers a real server would give without a network.

use std::future::Future;

use kube::client::Body;
use serde_json::{Value, json};
use tonic::codegen::http::{Request, Response};

/// One request as the fake server saw it.
#[derive(Clone, Debug)]
pub(crate) struct ApiCall {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The JSON body, or `Null` when there is none.
    pub body: Value,
}

impl ApiCall {
    /// `path?query`, as tests record what was asked.
    pub(crate) fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }
}

/// A client whose requests `answer` turns into (HTTP status, JSON body).
pub(crate) fn client<F, Fut>(answer: F) -> kube::Client
where
    F: Fn(ApiCall) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (u16, Value)> + Send + 'static,
{
    let service = tower::service_fn(move |req: Request<Body>| {
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await?;
            let request = ApiCall {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, reply) = answer(request).await;
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply)?))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
        }
    });
    kube::Client::new(service, "default")
}

/// kube-apiserver's answer for a path it does not serve.
pub(crate) fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": "the server could not find the requested resource",
           "reason": "NotFound", "code": 404})
}

/// kube-apiserver's discovery document for `group_version` serving `resources`.
pub(crate) fn resource_list<S: AsRef<str>>(group_version: &str, resources: &[S]) -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
        "resources": resources.iter().map(|r| json!({
            "name": r.as_ref(), "singularName": "", "namespaced": false, "kind": "X",
            "verbs": ["get", "list", "watch"]
        })).collect::<Vec<_>>()
    })
}
