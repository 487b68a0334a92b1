//! Observability: Prometheus metrics, the ops HTTP server and the `inspect` report.

pub mod inspect;
pub mod metrics;
pub(crate) mod ops;
