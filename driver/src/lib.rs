//! certvol: a CSI node plugin that gives every pod its own X.509 certificate on an inline
//! ephemeral volume.
//!
//! Modules, from pure data at the bottom to I/O at the edge:
//! `request` (what a volume asks for) · `attrs` (volume context → request) · `limits` (the
//! operator's bounds on durations and volumes per pod) · `clock` · `fair` (permits shared
//! round-robin between namespaces: key generation, renewal workers) ·
//! `keys` (key generation, CSR) · `pki` (certificate parsing and checks) · `layout` (issued
//! material → the volume's files, PEM and PKCS#12) · `issuer` (trait + local CA) · `fsutil`,
//! `store` (metadata on disk) · `mount` (tmpfs and bind mounts) · `writer` (the `..data` swap) ·
//! `volume` (publish, unpublish, renew) · `scheduler` (one renewal queue) · `recovery` (start-up
//! reconcile) · `csi` (gRPC services, the one error → status map) · `node` (the server) ·
//! `kubelet` (a CSI client acting as kubelet, for the demo and the e2e harness) · `demo` ·
//! `trust` (trust bundles: sources, assembly, CA rotation overlap, the watch-driven cache) ·
//! `events` (Warning events on pods) · `refresh` (the loop keeping trust bundles current) ·
//! `discovery` (which Kubernetes APIs and versions the cluster serves) · `pods` (pod identity:
//! the CSIDriver's podInfoOnMount and the node's pod watch).

#![forbid(unsafe_code)]

pub mod attrs;
pub mod clock;
pub mod crashpoint;
pub mod csi;
pub mod demo;
pub mod discovery;
pub mod events;
pub mod fair;
#[cfg(test)]
mod fakeapi;
pub mod fsutil;
pub mod inspect;
pub mod issuer;
pub mod keys;
pub mod kubeclient;
pub mod kubelet;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod ops;
pub mod pki;
pub mod pods;
pub mod recovery;
pub mod refresh;
pub mod request;
pub mod scheduler;
pub mod store;
pub mod tmpfs_budget;
pub mod trust;
pub mod volume;
pub mod writer;
