//! The life of a request object that both API-backed issuers share (cert-manager
//! `CertificateRequest`s and Kubernetes `CertificateSigningRequest`s): create it or adopt the one
//! filed before a crash, wait for its result on the node's watch, report a final failure as an
//! Event on the pod, and delete it once forgotten.
//!
//! What differs between the kinds (how the object is built, how its status reads, where it lives)
//! stays in the backends; [`RequestObject`] names the few kind-specific words and hints.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde::Serialize;
use tracing::{debug, info, warn};

use std::sync::Arc;

use super::cached::{Cached, Watched};
use super::labels::{LABEL_NODE, Owner, label_value};
use super::watch::{self, CacheLimits, Key, RequestCache, Waited};
use super::{IssueError, IssueRequest, Issued};
use crate::base::fair::Lease;
use crate::kube::events::EventSink;
use crate::obs::metrics::Metrics;

/// Field manager name on the requests the driver creates.
const FIELD_MANAGER: &str = "certvol";

/// The Event reasons a backend records on the pod for each kind of final failure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reasons {
    pub denied: &'static str,
    pub failed: &'static str,
    pub invalid: &'static str,
    pub timeout: &'static str,
}

/// A request object an issuer files and waits on. `kind` and `plural` (from [`Resource`]) name it
/// in messages.
pub(crate) trait RequestObject: Watched + Serialize {
    /// Reasons of the warning Events on the pod.
    const REASONS: Reasons;
    /// Appended to the message when the object disappeared before it was signed (starts with a
    /// space, or is empty).
    const DELETED_HINT: &'static str;
    /// Added to a 404 on CREATE when that points at a missing CRD; `None` treats 404 like any
    /// other transient answer.
    const CREATE_NOT_FOUND_HINT: Option<&'static str>;

    /// A one-line summary of a cached object's status, for timeout messages.
    fn describe_status(cached: &Cached) -> String;

    /// The warning Event (reason, request, message) for a failed issuance, or `None` when the
    /// failure is not the pod owner's to fix. Backends with extra failure kinds override this and
    /// fall back to [`standard_event`].
    fn event<'e>(
        error: &'e IssueError,
        wait_timeout: Duration,
        timeout_state: Option<&str>,
    ) -> Option<(&'static str, &'e str, String)> {
        standard_event::<Self>(error, wait_timeout, timeout_state)
    }
}

/// How the node watches its request objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestWatch {
    /// Namespaces to watch (`--request-namespaces`), one watch each; empty: all namespaces with
    /// one watch. Ignored for cluster-scoped kinds.
    pub namespaces: Vec<String>,
    /// What the cache holds at most.
    pub limits: CacheLimits,
}

impl RequestWatch {
    /// Whether requests may be filed in `namespace`: the node only sees results in the namespaces
    /// it watches.
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

/// Starts on this node's request objects (those carrying its `certvol.io/node` label and shaped
/// like its own, see [`Owner`]): returns the cache issuances wait on, the sink for Events
/// on pods, and the watch loop future, which the caller spawns. Until the future runs, issuances
/// file their requests but time out waiting. `namespaced` kinds are watched in
/// `watch.namespaces` (all when empty), cluster-scoped ones with one cluster-wide watch. What
/// the cache drops is counted in `metrics`.
pub(crate) fn node_requests<R: RequestObject>(
    client: &kube::Client,
    node_id: &str,
    watch: &RequestWatch,
    namespaced: bool,
    metrics: &Metrics,
) -> (
    Arc<RequestCache<R>>,
    EventSink,
    impl Future<Output = ()> + Send + 'static + use<R>,
) {
    let node_label = label_value(node_id);
    let selector = format!("{LABEL_NODE}={node_label}");
    let apis: Vec<Api<R>> = if namespaced && !watch.namespaces.is_empty() {
        watch
            .namespaces
            .iter()
            .map(|ns| R::api(client.clone(), Some(ns)))
            .collect()
    } else {
        vec![R::api(client.clone(), None)]
    };
    let cache = RequestCache::new(
        Owner::new(node_id),
        watch.limits,
        apis.len(),
        metrics.clone(),
    );
    let loops: Vec<_> = apis
        .into_iter()
        .enumerate()
        .map(|(i, api)| watch::run(api, selector.clone(), cache.clone(), i))
        .collect();
    let watches = async move {
        futures::future::join_all(loops).await;
    };
    let events = EventSink::new(client.clone(), node_id.to_owned());
    (cache, events, watches)
}

fn kind<R: RequestObject>() -> String {
    R::kind(&()).into_owned()
}

/// The Event for denial, failure, invalidity and timeout, worded with the object's kind.
pub(crate) fn standard_event<'e, R: RequestObject>(
    error: &'e IssueError,
    wait_timeout: Duration,
    timeout_state: Option<&str>,
) -> Option<(&'static str, &'e str, String)> {
    let kind = R::kind(&());
    let reasons = R::REASONS;
    Some(match error {
        IssueError::Denied { request, message } => (
            reasons.denied,
            request,
            format!("{kind} {request} was denied: {message}"),
        ),
        IssueError::Failed { request, message } => (
            reasons.failed,
            request,
            format!("{kind} {request} failed: {message}"),
        ),
        IssueError::Invalid { request, message } => (
            reasons.invalid,
            request,
            format!("{kind} {request} is invalid: {message}"),
        ),
        IssueError::Timeout { request } => (
            reasons.timeout,
            request,
            format!(
                "{kind} {request} was not signed within {wait_timeout:?}; status: {}",
                timeout_state.unwrap_or("unknown")
            ),
        ),
        // Transient API trouble is the node's problem, not something the pod's owner can fix.
        _ => return None,
    })
}

/// Passes an issuance's result through, first recording a warning Event on the pod for a final
/// (or timed-out) failure. The error side carries the request's state on a timeout.
pub(crate) async fn reported<R: RequestObject>(
    events: &EventSink,
    req: &IssueRequest,
    wait_timeout: Duration,
    result: Result<Issued, (IssueError, Option<String>)>,
) -> Result<Issued, IssueError> {
    let (error, timeout_state) = match result {
        Ok(issued) => return Ok(issued),
        Err(failure) => failure,
    };
    if let Some((reason, request, message)) =
        R::event(&error, wait_timeout, timeout_state.as_deref())
    {
        events
            .report(&req.cert.pod, reason, request, &message)
            .await;
    }
    Err(error)
}

/// Creates `object`; on 409 AlreadyExists adopts the existing one. Returns whether it was adopted
/// and the created object's uid. `created` runs right after a successful CREATE (the backend's
/// log line and crash point).
pub(crate) async fn create_or_adopt<R: RequestObject>(
    api: &Api<R>,
    object: &R,
    request: &str,
    created: impl FnOnce(),
) -> Result<(bool, Option<String>), IssueError> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, object).await {
        Ok(object) => {
            created();
            Ok((false, object.meta().uid.clone()))
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            // Same deterministic name: this node filed it before a restart. Never file a second.
            info!(%request, "{} already exists; adopting it", kind::<R>());
            Ok((true, None))
        }
        Err(error) => Err(create_error::<R>(request, error)),
    }
}

/// Maps a failed CREATE to the issuance error the volume layer acts on.
fn create_error<R: RequestObject>(request: &str, error: kube::Error) -> IssueError {
    let kind = kind::<R>();
    match error {
        kube::Error::Api(status) => match (status.code, R::CREATE_NOT_FOUND_HINT) {
            // Schema, validation or webhook rejection: this request can never be filed as it is.
            (400 | 422, _) => IssueError::Invalid {
                request: request.to_owned(),
                message: format!("the API server rejected the {kind}: {}", status.message),
            },
            (404, Some(hint)) => IssueError::Unavailable {
                message: format!("creating {kind} {request}: {} ({hint})", status.message),
            },
            // 401/403 (an expired pod token, missing RBAC, a terminating namespace), 404, 409
            // conflicts, 429 and 5xx may all clear up without a new request: retry.
            _ => IssueError::Unavailable {
                message: format!(
                    "creating {kind} {request}: {} {}: {}",
                    status.code, status.reason, status.message
                ),
            },
        },
        other => IssueError::Unavailable {
            message: format!("creating {kind} {request}: {other}"),
        },
    }
}

/// One request [`file_and_wait`] files and waits for.
pub(crate) struct Filing<'a, R> {
    /// The node's watch of requests of its kind.
    pub cache: &'a RequestCache<R>,
    /// Where the request shows in `cache`.
    pub key: &'a Key,
    /// Its name in messages.
    pub request: &'a str,
    pub wait_timeout: Duration,
    /// The renewal's worker (see [`IssueRequest::worker`]).
    pub worker: &'a Lease,
}

/// Files `filing`'s request (unless the node's watch already shows it) and waits up to its
/// `wait_timeout` for `check` to give its result. `file` creates or adopts it (see
/// [`create_or_adopt`]); `check` is told whether the object was adopted, so it can refuse one
/// that is not ours. A timeout also returns what the request looked like, for the Event.
/// The worker is put down once the request is filed: waiting on the watch costs the node
/// nothing, and the signer may never answer.
pub(crate) async fn file_and_wait<R, File, Filed, Check>(
    filing: Filing<'_, R>,
    file: File,
    check: Check,
) -> Result<Issued, (IssueError, Option<String>)>
where
    R: RequestObject,
    File: FnOnce() -> Filed,
    Filed: Future<Output = Result<(bool, Option<String>), IssueError>>,
    Check: Fn(bool, &Cached) -> Option<Result<Issued, IssueError>>,
{
    let Filing {
        cache,
        key,
        request,
        wait_timeout,
        worker,
    } = filing;
    let kind = kind::<R>();
    // Subscribe before creating: a result that lands between the create and the first look at
    // the cache must still wake this waiter.
    let changes = cache.subscribe();
    let (adopted, uid) = if let Some(known) = cache.get(key) {
        // Already on the node's watch (a retry after a timeout, or filed before a restart):
        // nothing to file, and no API call at all.
        debug!(%request, "{kind} already on the watch; waiting for it");
        (true, known.uid.clone())
    } else {
        file().await.map_err(|e| (e, None))?
    };
    worker.pause();
    match cache
        .wait(key, changes, uid, wait_timeout, |object| {
            check(adopted, object)
        })
        .await
    {
        Waited::Done(result) => result.map_err(|e| (e, None)),
        Waited::Deleted => Err((
            IssueError::Failed {
                request: request.to_owned(),
                message: format!(
                    "the {kind} was deleted before it was signed{}",
                    R::DELETED_HINT
                ),
            },
            None,
        )),
        Waited::TimedOut { last, synced } => {
            let state = match (last, synced) {
                (Some(object), _) => R::describe_status(&object),
                (None, true) if !key.0.is_empty() && cache.was_over_limit(&key.0) => format!(
                    "the request has not appeared on the node's watch, which ignores {kind}s of namespace {:?} beyond --max-requests-per-namespace (see certvol_request_watch_dropped_total)",
                    key.0
                ),
                (None, true) => "the request has not appeared on the node's watch".into(),
                (None, false) => format!(
                    "the node's {kind} watch has not synced yet (is the API server reachable and may the driver list/watch {}?)",
                    R::plural(&())
                ),
            };
            warn!(%request, %state, timeout = ?wait_timeout, "timed out waiting for {kind}");
            Err((
                IssueError::Timeout {
                    request: request.to_owned(),
                },
                Some(state),
            ))
        }
    }
}

/// Deletes the named requests (in `namespace`, or cluster-wide for `None`), ignoring ones already
/// gone and trying every name; the first failure is returned.
pub(crate) async fn delete_all<R: RequestObject>(
    api: &Api<R>,
    namespace: Option<&str>,
    names: &[String],
) -> Result<(), IssueError> {
    let kind = kind::<R>();
    let mut first_error = None;
    for name in names {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => debug!(namespace, name, "deleted {kind}"),
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => {
                warn!(namespace, name, %error, "could not delete {kind}");
                let shown = match namespace {
                    Some(namespace) => format!("{namespace}/{name}"),
                    None => name.clone(),
                };
                first_error.get_or_insert(IssueError::Unavailable {
                    message: format!("deleting {kind} {shown}: {error}"),
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
