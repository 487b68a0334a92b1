//! certvol: a CSI node plugin that gives every pod its own X.509 certificate on an inline
//! ephemeral volume.
//!
//! The modules are layered; each may use only the layers below it (`driver/tests/layering.rs`
//! checks this, and docs/architecture.md draws it):
//!
//! 1. `base` (clock, crash points, fair permits) · `spec` (the typed request and the attribute
//!    parser) · `x509` (keys, CSRs, certificate checks) · `trust::{source, bundle, rotation}`
//!    — pure data and policy, no I/O;
//! 2. `files` (layout, the `..data` writer, mounts, the state store) · `kube` (client, events,
//!    discovery, pods) · `issuer` (the trait and its backends) · `trust::watch` — I/O;
//! 3. `runtime` (the renewal scheduler, the trust refresher) · `volume` (publish, renew,
//!    unpublish, recovery) — orchestration;
//! 4. `csi` (gRPC services, the one error → status map) · `obs` (metrics, ops server, inspect) ·
//!    `node` (the server) · `demo` (a kubelet-shaped client and the local demo) — the edges.

#![forbid(unsafe_code)]
// The public surface is what the binary and the e2e harness use; everything else is
// pub(crate), and this lint keeps it so.
#![warn(unreachable_pub)]

pub mod base;
pub(crate) mod csi;
#[cfg(feature = "demo")]
pub mod demo;
pub mod files;
pub mod issuer;
pub mod kube;
pub mod node;
pub mod obs;
pub(crate) mod runtime;
pub mod spec;
pub mod trust;
pub(crate) mod volume;
pub mod x509;
