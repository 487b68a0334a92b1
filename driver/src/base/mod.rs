//! The bottom layer: an injected wall clock and random source, crash points for the
//! crash-safety tests, and the fair permit pools shared by namespaces. No I/O, no Kubernetes.

pub(crate) mod clock;
pub mod crashpoint;
pub(crate) mod fair;
pub(crate) mod random;
