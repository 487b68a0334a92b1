//! The operational HTTP endpoint (`--metrics-address`): `GET /metrics` (Prometheus / OpenMetrics
//! text), `GET /healthz` (the process serves HTTP: liveness) and `GET /readyz` (recovered, CSI
//! socket served, issuer reachable: readiness). Plain HTTP without authentication, as is usual for
//! a node-local metrics port: nothing here reveals pods, volumes, tokens or keys.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::obs::metrics;

/// The default `--metrics-address`: 9402 is the port cert-manager's csi-driver uses for metrics,
/// which Prometheus scrape configs for cert-manager components already expect.
pub(crate) const DEFAULT_ADDRESS: &str = "0.0.0.0:9402";

/// Answers whether the driver is ready, or why not (the `/readyz` body).
pub(crate) type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Why the ops endpoint could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error("--metrics-address {address}: cannot listen: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("metrics endpoint: {0}")]
    Serve(#[source] io::Error),
}

/// Parses `--metrics-address`: `off` or an empty value disables the endpoint.
pub(crate) fn parse_address(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        format!(
            "{s:?} is not an address; accepted: IP:PORT (e.g. 0.0.0.0:9402, [::]:9402) or \"off\""
        )
    })
}

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: ReadyCheck,
}

/// The routes, over the metrics registered in `registry` and `ready`.
pub(crate) fn router(registry: Registry, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops {
            registry: Arc::new(registry),
            ready,
        })
}

async fn scrape(State(ops): State<Ops>) -> Response {
    match metrics::encode(&ops.registry) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response(),
    }
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match (ops.ready)() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Binds the endpoint (done before serving so a taken port fails start-up, not a background task).
pub(crate) async fn bind(address: SocketAddr) -> Result<TcpListener, OpsError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| OpsError::Bind { address, source })
}

/// Serves the routes on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Registry,
    ready: ReadyCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OpsError> {
    axum::serve(listener, router(registry, ready))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(OpsError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 GET: status code and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        conn.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("off").unwrap(), None);
        assert_eq!(parse_address("").unwrap(), None);
        assert_eq!(
            parse_address("127.0.0.1:9402").unwrap(),
            Some("127.0.0.1:9402".parse().unwrap())
        );
        assert!(parse_address("[::]:1").unwrap().is_some());
        assert!(parse_address(DEFAULT_ADDRESS).unwrap().is_some());
        let err = parse_address("localhost").unwrap_err();
        assert!(err.contains("IP:PORT"), "{err}");
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let mut registry = Registry::with_prefix(metrics::PREFIX);
        let metrics = metrics::Metrics::register(&mut registry);
        metrics.rpc(
            "NodePublishVolume",
            tonic::Code::Ok,
            std::time::Duration::from_millis(5),
        );
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let check: ReadyCheck = Arc::new(move || {
            if flag.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("recovering".into())
            }
        });
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, registry, check, async move {
            let _ = stop_rx.await;
        }));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("recovering"), "{body}");
        ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        let (status, head, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            body.contains(r#"certvol_rpc_total{rpc="NodePublishVolume",code="OK"} 1"#),
            "{body}"
        );
        assert!(
            body.contains("certvol_publish_duration_seconds_count 1"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(
            err.contains("--metrics-address") && err.contains(&addr.to_string()),
            "{err}"
        );
    }
}
