//! The driver's Kubernetes client: kube-rs with a client-side rate limit (QPS with a burst), as
//! client-go's `--kube-api-qps` / `--kube-api-burst` give Kubernetes components, so a node that
//! publishes hundreds of volumes at once cannot flood the API server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// Requests per second and burst size of the client-side limiter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub qps: f64,
    pub burst: u32,
}

impl Default for RateLimit {
    /// Twice client-go's defaults (5 QPS, burst 10): one node's share of a busy API server.
    fn default() -> Self {
        RateLimit {
            qps: 10.0,
            burst: 20,
        }
    }
}

/// Builds a client from `config` whose requests pass through the limiter.
pub fn client(config: kube::Config, limit: RateLimit) -> Result<kube::Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder
        .with_layer(&RateLimitLayer(limit))
        .with_layer(&CountLayer)
        .build())
}

/// Tower layer for [`Counted`].
#[derive(Clone, Copy, Debug)]
pub struct CountLayer;

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner)
    }
}

/// Counts every API request in `certvol_kube_requests_total{verb,code}` once its response
/// headers (or its error) arrive; a watch therefore counts when it is established. Layers added
/// with `with_layer` sit outside kube's own retry of 429/503/504, so a call counts once, with its
/// final status.
#[derive(Clone, Debug)]
pub struct Counted<S>(S);

/// The Kubernetes verb of a request, as far as method and query tell it. `get` also covers
/// `list`: telling them apart would mean parsing resource paths, and both are reads.
fn verb_of<B>(req: &axum::http::Request<B>) -> &'static str {
    use axum::http::Method;
    let watching = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *req.method() {
        Method::GET if watching => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

impl<S, B, R> Service<axum::http::Request<B>> for Counted<S>
where
    S: Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let verb = verb_of(&req);
        let response = self.0.call(req);
        Box::pin(async move {
            let result = response.await;
            let code = result.as_ref().ok().map(|r| r.status().as_u16());
            crate::metrics::global().kube_request(verb, code);
            result
        })
    }
}

/// Tower layer for [`RateLimited`].
#[derive(Clone, Copy, Debug)]
pub struct RateLimitLayer(pub RateLimit);

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited::new(inner, self.0)
    }
}

/// A token bucket in front of a service: `burst` requests may go at once, then one every
/// `1/qps` seconds. Waiting happens in `poll_ready` (with tokio time), so callers queue in order
/// instead of failing.
pub struct RateLimited<S> {
    inner: S,
    qps: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> RateLimited<S> {
    pub fn new(inner: S, limit: RateLimit) -> Self {
        // A non-positive or NaN rate would never refill; treat it as "no limit" rather than hang.
        let qps = if limit.qps.is_finite() && limit.qps > 0.0 {
            limit.qps
        } else {
            f64::INFINITY
        };
        let burst = f64::from(limit.burst.max(1));
        RateLimited {
            inner,
            qps,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            sleep: None,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        self.refilled = now;
    }
}

impl<S, Req> Service<Req> for RateLimited<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => self.sleep = None,
                }
            }
            self.refill();
            if self.tokens >= 1.0 {
                break;
            }
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.qps);
            self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.tokens -= 1.0;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// Records when each request arrived.
    #[derive(Clone, Default)]
    struct Clockwork(
        std::sync::Arc<std::sync::Mutex<Vec<Duration>>>,
        Option<Instant>,
    );

    impl Service<()> for Clockwork {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Ready<Result<(), Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            let start = self.1.unwrap_or_else(Instant::now);
            self.0.lock().unwrap().push(start.elapsed());
            std::future::ready(Ok(()))
        }
    }

    async fn arrivals(limit: RateLimit, n: usize) -> Vec<u64> {
        let record = Clockwork(Default::default(), Some(Instant::now()));
        let log = record.0.clone();
        let mut svc = RateLimited::new(record, limit);
        for _ in 0..n {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        let times = log.lock().unwrap().clone();
        times.iter().map(|d| d.as_millis() as u64).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_at_once_then_qps_paces() {
        let times = arrivals(RateLimit { qps: 5.0, burst: 3 }, 6).await;
        assert_eq!(times, vec![0, 0, 0, 200, 400, 600]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_up_to_the_burst_only() {
        let record = Clockwork(Default::default(), Some(Instant::now()));
        let log = record.0.clone();
        let mut svc = RateLimited::new(
            record,
            RateLimit {
                qps: 10.0,
                burst: 2,
            },
        );
        for _ in 0..2 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        for _ in 0..3 {
            svc.ready().await.unwrap().call(()).await.unwrap();
        }
        let times: Vec<u64> = log
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(times, vec![0, 0, 60_000, 60_000, 60_100]);
    }

    #[test]
    fn verbs_from_method_and_query() {
        let req = |method: &str, uri: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap()
        };
        let path = "/apis/cert-manager.io/v1/certificaterequests";
        assert_eq!(verb_of(&req("GET", path)), "get");
        assert_eq!(
            verb_of(&req("GET", &format!("{path}?labelSelector=a&watch=true"))),
            "watch"
        );
        assert_eq!(verb_of(&req("GET", &format!("{path}?watch=false"))), "get");
        assert_eq!(verb_of(&req("POST", path)), "create");
        assert_eq!(verb_of(&req("DELETE", path)), "delete");
        assert_eq!(verb_of(&req("PATCH", path)), "patch");
        assert_eq!(verb_of(&req("PUT", path)), "update");
    }

    #[tokio::test(start_paused = true)]
    async fn nonsense_rates_do_not_hang() {
        let times = arrivals(RateLimit { qps: 0.0, burst: 0 }, 4).await;
        assert_eq!(times, vec![0, 0, 0, 0]);
    }
}
