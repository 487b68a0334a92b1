//! The bottom layer: an injected wall clock and random source, crash points for the
//! crash-safety tests, and the fair permit pools shared by namespaces. No I/O, no Kubernetes.

pub mod clock;
pub mod crashpoint;
pub mod fair;
pub mod random;
