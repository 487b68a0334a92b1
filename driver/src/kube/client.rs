//! The driver's Kubernetes client: kube-rs with a client-side rate limit (QPS with a burst), as
//! client-go's `--kube-api-qps` / `--kube-api-burst` give Kubernetes components, so a node that
//! publishes hundreds of volumes at once cannot flood the API server, and with bounded responses
//! ([`MAX_EVENT_BYTES`], [`MAX_RESPONSE_BYTES`]), so a hostile or broken API server cannot make
//! the driver allocate without limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::obs::metrics::Metrics;

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

/// Builds a client from `config` whose requests pass through the limiter, are counted in
/// `metrics`, and whose responses are bounded.
pub(crate) fn client(
    config: kube::Config,
    limit: RateLimit,
    metrics: &Metrics,
) -> Result<kube::Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(stacked(builder, limit, MAX_RESPONSE_BYTES, metrics))
}

/// The issuer's client: its own token bucket (so that trust-source lists, Events and discovery
/// on the node's other client never queue ahead of filing a request), and responses bounded by
/// [`MAX_ISSUANCE_RESPONSE_BYTES`], since its biggest answers are the request watch's small list
/// pages.
pub(crate) fn issuance_client(
    config: kube::Config,
    limit: RateLimit,
    metrics: &Metrics,
) -> Result<kube::Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(stacked(
        builder,
        limit,
        MAX_ISSUANCE_RESPONSE_BYTES,
        metrics,
    ))
}

/// The node's two API clients, each with its own token bucket: `general` for trust sources,
/// Events and discovery (`--kube-api-qps/-burst`), `issuance` for the issuer's requests and
/// their watch (`--issuance-api-qps/-burst`). Both count their requests in the same metrics.
#[derive(Clone)]
pub(crate) struct ApiClients {
    pub general: kube::Client,
    pub issuance: kube::Client,
}

impl ApiClients {
    pub(crate) fn new(
        config: &kube::Config,
        general: RateLimit,
        issuance: RateLimit,
        metrics: &Metrics,
    ) -> Result<Self, kube::Error> {
        Ok(ApiClients {
            general: client(config.clone(), general, metrics)?,
            issuance: issuance_client(config.clone(), issuance, metrics)?,
        })
    }

    /// The same two clients over `service` (tests: a fake API server).
    #[cfg(test)]
    pub(crate) fn over<S, B>(service: S, general: RateLimit, issuance: RateLimit) -> Self
    where
        S: Service<axum::http::Request<kube::client::Body>, Response = axum::http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<tower::BoxError>,
        B: http_body::Body<Data = axum::body::Bytes> + Unpin + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        let builder = |s| kube::client::ClientBuilder::new(s, "default");
        let metrics = Metrics::detached();
        ApiClients {
            general: stacked(
                builder(service.clone()),
                general,
                MAX_RESPONSE_BYTES,
                &metrics,
            ),
            issuance: stacked(
                builder(service),
                issuance,
                MAX_ISSUANCE_RESPONSE_BYTES,
                &metrics,
            ),
        }
    }
}

/// `builder`'s stack behind certvol's layers: bounded responses, the token bucket (one per
/// client built), request metrics.
fn stacked<S, B>(
    builder: kube::client::ClientBuilder<S>,
    limit: RateLimit,
    response: usize,
    metrics: &Metrics,
) -> kube::Client
where
    S: Service<axum::http::Request<kube::client::Body>, Response = axum::http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: http_body::Body<Data = axum::body::Bytes> + Unpin + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    builder
        .with_layer(&BodyLimitLayer { response })
        .with_layer(&RateLimitLayer(limit))
        .with_layer(&CountLayer(metrics.clone()))
        .build()
}

/// A client with bounded responses only (no rate limit, no request metrics): for short-lived
/// clients that act with someone else's credentials (a pod's token).
pub(crate) fn bounded_client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(builder.with_layer(&BodyLimitLayer::default()).build())
}

/// Largest watch event accepted: one line of a watch stream, i.e. one object. etcd caps an object
/// at about 1.5 MiB, so a longer line is not a Kubernetes object; reading on would let the sender
/// grow the driver's memory without bound (kube reads a line until its newline).
pub(crate) const MAX_EVENT_BYTES: usize = 4 << 20;

/// Largest response to any other request. The biggest ones are list pages of the watches (up to
/// 500 objects each, the watcher's page size); a node's requests and trust sources come to a few
/// MiB at most.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Objects per list page of the node's request watch (`issuer::watch`). The watcher holds one page at a time, and a page costs about four
/// times its JSON while it is read (hyper's chunks, their concatenation, the parsed objects); a
/// hostile tenant can make every object of a page about 1.5 MiB (etcd's limit), so a page of 4
/// peaks at about 25 MiB (measured: a flood of 40 such objects took the driver from 22 MiB to 45
/// MiB, against 65 MiB with pages of 8 and 128 MiB with the watcher's default of 500). A node's
/// hundred or so requests still list in a few dozen small requests (about 2 s at the issuance
/// client's default 10 QPS, burst 20).
pub(crate) const REQUEST_PAGE_SIZE: u32 = 4;

/// Largest response to the issuer's client ([`issuance_client`]). Its biggest answers are list
/// pages of the request watch, [`REQUEST_PAGE_SIZE`] (4) objects each. certvol's
/// own requests are a few KiB (a CSR, a certificate chain of a few KiB, a CA), so a page of
/// them is well under 100 KiB; but anyone who may create request objects can add the node's
/// label to objects of up to etcd's 1.5 MiB (about 2 MiB as JSON once a protobuf-stored CSR's
/// bytes are base64), and a list that always failed would keep the node unready. 4 × 2 MiB plus
/// the list's envelope fits in 12 MiB, a fifth of [`MAX_RESPONSE_BYTES`].
pub(crate) const MAX_ISSUANCE_RESPONSE_BYTES: usize = 12 << 20;

// etcd refuses requests over 1.5 MiB; an event adds a few bytes of envelope around the object.
const _: () = assert!(MAX_EVENT_BYTES > (3 << 19) + 4096 && MAX_RESPONSE_BYTES >= MAX_EVENT_BYTES);
const _: () = assert!(
    MAX_ISSUANCE_RESPONSE_BYTES >= REQUEST_PAGE_SIZE as usize * (2 << 20) + 65536
        && MAX_ISSUANCE_RESPONSE_BYTES >= MAX_EVENT_BYTES
);

/// Backoff before relisting after `failures` consecutive failed attempts (at least 1): 1 s
/// doubling to 30 s, shortened by up to a fifth at random (`jitter` in [0, 1)) so that the nodes
/// of a cluster do not relist in lockstep after an API server outage.
pub(crate) fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    let base = Duration::from_secs(1u64 << exp).min(Duration::from_secs(30));
    base.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// A response from the API server was larger than certvol accepts. The request (or the watch)
/// fails with this error; watches relist after their backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LimitError {
    #[error(
        "a watch event from the Kubernetes API is larger than {max} bytes, certvol's limit per event (Kubernetes objects are at most about 1.5 MiB); the watch was dropped"
    )]
    Event { max: usize },
    #[error(
        "a response from the Kubernetes API is larger than {max} bytes, certvol's limit per response; the request failed"
    )]
    Response { max: usize },
}

/// Tower layer for [`BodyLimited`]: watch events are bounded by [`MAX_EVENT_BYTES`], other
/// responses by `response` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimitLayer {
    pub response: usize,
}

impl Default for BodyLimitLayer {
    fn default() -> Self {
        BodyLimitLayer {
            response: MAX_RESPONSE_BYTES,
        }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimited<S>;
    fn layer(&self, inner: S) -> BodyLimited<S> {
        BodyLimited {
            inner,
            limits: Limits {
                event: MAX_EVENT_BYTES,
                response: self.response,
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    event: usize,
    response: usize,
}

/// Wraps each response body in a [`LimitedBody`]: watch responses are bounded per event (a
/// watch may stream for hours), everything else in total.
#[derive(Clone, Debug)]
pub(crate) struct BodyLimited<S> {
    inner: S,
    limits: Limits,
}

impl<S, B, R> Service<axum::http::Request<B>> for BodyLimited<S>
where
    S: Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<LimitedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let limit = if verb_of(&req) == "watch" {
            Limit::PerLine(self.limits.event)
        } else {
            Limit::Total(self.limits.response)
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| LimitedBody {
                inner,
                limit,
                seen: 0,
                failed: false,
            }))
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Limit {
    /// Bytes since the last newline (one watch event).
    PerLine(usize),
    /// Bytes of the whole body.
    Total(usize),
}

/// A response body that fails once it exceeds its [`Limit`], before the caller buffers more.
#[derive(Debug)]
pub(crate) struct LimitedBody<B> {
    inner: B,
    limit: Limit,
    /// Bytes counted against the limit so far.
    seen: usize,
    failed: bool,
}

impl<B> LimitedBody<B> {
    /// Counts `data`; the error to yield if it crosses the limit.
    fn count(&mut self, data: &[u8]) -> Option<LimitError> {
        match self.limit {
            Limit::PerLine(max) => {
                self.seen = match data.iter().rposition(|&b| b == b'\n') {
                    Some(at) => data.len() - at - 1,
                    None => self.seen.saturating_add(data.len()),
                };
                (self.seen > max).then_some(LimitError::Event { max })
            }
            Limit::Total(max) => {
                self.seen = self.seen.saturating_add(data.len());
                (self.seen > max).then_some(LimitError::Response { max })
            }
        }
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = axum::body::Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(err) = self.count(data)
                {
                    self.failed = true;
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Tower layer for [`Counted`], counting into its metrics.
#[derive(Clone, Debug)]
pub(crate) struct CountLayer(pub Metrics);

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// Counts every API request in `certvol_kube_requests_total{verb,code}` once its response
/// headers (or its error) arrive; a watch therefore counts when it is established. Layers added
/// with `with_layer` sit outside kube's own retry of 429/503/504, so a call counts once, with its
/// final status.
#[derive(Clone, Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    metrics: Metrics,
}

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
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let verb = verb_of(&req);
        let response = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = response.await;
            let code = result.as_ref().ok().map(|r| r.status().as_u16());
            metrics.kube_request(verb, code);
            result
        })
    }
}

/// Tower layer for [`RateLimited`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateLimitLayer(pub RateLimit);

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited::new(inner, self.0)
    }
}

/// A token bucket in front of a service: `burst` requests may go at once, then one every
/// `1/qps` seconds. Waiting happens in `poll_ready` (with tokio time), so callers queue in order
/// instead of failing.
pub(crate) struct RateLimited<S> {
    inner: S,
    qps: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> RateLimited<S> {
    pub(crate) fn new(inner: S, limit: RateLimit) -> Self {
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
        std::sync::Arc<parking_lot::Mutex<Vec<Duration>>>,
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
            self.0.lock().push(start.elapsed());
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
        let times = log.lock().clone();
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
        let times: Vec<u64> = log.lock().iter().map(|d| d.as_millis() as u64).collect();
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

    /// Sends one request through a [`BodyLimited`] with small limits to a service answering
    /// `chunks`, and reads the body: the data read before the end, and the error if any.
    async fn read_limited(uri: &str, chunks: Vec<Vec<u8>>) -> (usize, Option<String>) {
        use http_body::Body as _;
        let inner = tower::service_fn(move |_: axum::http::Request<()>| {
            let chunks = chunks.clone();
            async move {
                let stream = futures::stream::iter(
                    chunks
                        .into_iter()
                        .map(|c| Ok::<_, Infallible>(axum::body::Bytes::from(c))),
                );
                Ok::<_, Infallible>(axum::http::Response::new(axum::body::Body::from_stream(
                    stream,
                )))
            }
        });
        let mut svc = BodyLimited {
            inner,
            limits: Limits {
                event: 10,
                response: 25,
            },
        };
        let req = axum::http::Request::builder().uri(uri).body(()).unwrap();
        let mut body = svc
            .ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .into_body();
        let mut read = 0;
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                None => return (read, None),
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => {
                    // Nothing after the error: the caller must not be fed more.
                    let after = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                    assert!(after.is_none());
                    return (read, Some(e.to_string()));
                }
            }
        }
    }

    #[tokio::test]
    async fn watch_events_are_bounded_per_line_and_other_responses_in_total() {
        let watch = "/apis/cert-manager.io/v1/certificaterequests?watch=true";
        // Many short events: a stream may run for hours, only each event is bounded.
        let events: Vec<Vec<u8>> = (0..100).map(|_| b"{\"a\":1}\n".to_vec()).collect();
        assert_eq!(read_limited(watch, events).await, (800, None));
        // An event split over chunks is counted across them.
        let split = vec![
            b"{\"a\":".to_vec(),
            b"1}\n{\"b\"".to_vec(),
            b":22222}".to_vec(),
        ];
        let (read, err) = read_limited(watch, split).await;
        assert_eq!(read, 12);
        let err = err.expect("the second event is longer than 10 bytes");
        assert!(
            err.contains("watch event") && err.contains("larger than 10 bytes"),
            "{err}"
        );
        // A line that never ends.
        let endless: Vec<Vec<u8>> = (0..1000).map(|_| vec![b'x'; 4]).collect();
        let (read, err) = read_limited(watch, endless).await;
        assert_eq!(read, 8, "stops at the first chunk over the limit");
        assert!(err.is_some());

        let get = "/apis/cert-manager.io/v1/certificaterequests";
        assert_eq!(read_limited(get, vec![vec![b'x'; 25]]).await, (25, None));
        let (read, err) = read_limited(get, vec![vec![b'\n'; 20], vec![b'\n'; 6]]).await;
        assert_eq!(read, 20);
        let err = err.expect("26 bytes in total");
        assert!(
            err.contains("response") && err.contains("larger than 25 bytes"),
            "{err}"
        );
    }

    /// A fake API server recording the (virtual) time each request reached it.
    fn recording_server(
        log: std::sync::Arc<parking_lot::Mutex<Vec<(String, Duration)>>>,
    ) -> impl Service<
        axum::http::Request<kube::client::Body>,
        Response = axum::http::Response<kube::client::Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<axum::http::Response<kube::client::Body>, Infallible>>
                 + Send,
    > + Clone
    + Send
    + 'static {
        let start = Instant::now();
        tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let log = log.clone();
            async move {
                log.lock().push((
                    format!("{} {}", req.method(), req.uri().path()),
                    start.elapsed(),
                ));
                let (parts, body) = req.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                let reply = if parts.method == axum::http::Method::POST {
                    body.to_vec()
                } else {
                    br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ca","namespace":"shop"}}"#.to_vec()
                };
                Ok(axum::http::Response::builder()
                    .status(if parts.method == axum::http::Method::POST {
                        201
                    } else {
                        200
                    })
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(reply))
                    .unwrap())
            }
        })
    }

    /// Queues `n` trust-source reads on `client` and returns once they wait in its bucket.
    async fn flood(client: &kube::Client, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "shop");
        let tasks = (0..n)
            .map(|i| {
                let api = api.clone();
                tokio::spawn(async move {
                    let _ = api.get(&format!("trust-{i}")).await;
                })
            })
            .collect();
        // Long enough for every read to be queued, short against the bucket's 10 QPS.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tasks
    }

    /// How long filing one CertificateRequest through `client` takes.
    async fn file_request(client: &kube::Client) -> Duration {
        use crate::issuer::certmanager::resource::{self, tests};
        let cr = resource::build(&tests::issue_request(tests::cert_request()), "node-1");
        let api: kube::Api<resource::CertificateRequest> =
            kube::Api::namespaced(client.clone(), "shop");
        let started = Instant::now();
        api.create(&kube::api::PostParams::default(), &cr)
            .await
            .expect("create");
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_trust_source_reads_does_not_delay_issuance() {
        let log = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let clients = ApiClients::over(
            recording_server(log.clone()),
            RateLimit::default(),
            RateLimit::default(),
        );
        // 200 reads at 10 QPS after a burst of 20 take 18 s to get through.
        let reads = flood(&clients.general, 200).await;
        let waited = file_request(&clients.issuance).await;
        assert!(
            waited < Duration::from_millis(50),
            "issuance waited {waited:?}"
        );
        for read in reads {
            read.await.unwrap();
        }
        let last_read = log
            .lock()
            .iter()
            .filter(|(what, _)| what.starts_with("GET"))
            .map(|(_, at)| *at)
            .max()
            .unwrap();
        assert!(last_read >= Duration::from_secs(17), "{last_read:?}");

        // What one shared bucket (the node before issuance had its own) would do: the create
        // queues behind the reads.
        let reads = flood(&clients.general, 200).await;
        let waited = file_request(&clients.general).await;
        assert!(waited >= Duration::from_secs(17), "{waited:?}");
        for read in reads {
            read.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nonsense_rates_do_not_hang() {
        let times = arrivals(RateLimit { qps: 0.0, burst: 0 }, 4).await;
        assert_eq!(times, vec![0, 0, 0, 0]);
    }

    #[test]
    fn retry_delay_doubles_to_thirty_seconds_and_jitter_only_shortens() {
        let table = [
            (1, 0.0, 1_000),
            (2, 0.0, 2_000),
            (3, 0.0, 4_000),
            (5, 0.0, 16_000),
            (6, 0.0, 30_000),
            (40, 0.0, 30_000),
            (1, 0.5, 900),
            (6, 0.999_999, 24_000),
        ];
        for (failures, jitter, millis) in table {
            assert_eq!(
                retry_delay(failures, jitter).as_millis(),
                millis,
                "failures={failures} jitter={jitter}"
            );
        }
    }
}
