//! The container-faithful tier: the real `certvol` binary run the way kubelet and a container
//! runtime run the chart's DaemonSet pod, derived from the chart as Helm renders it.
//!
//! - [`pod`] reads the rendered DaemonSet and CSIDriver (command, args, env, security context,
//!   volumes and their propagation, probes, registration path).
//! - [`runtime`] starts one container in a fresh mount namespace (read-only root when the pod
//!   says so, each hostPath volume at its mountPath with its propagation); it runs as the
//!   `certvol-runtime` binary.
//! - [`node`] is the emulated node: its own mount namespace with kubelet's directories, where
//!   the test process plays kubelet.

pub mod node;
pub mod pod;
pub mod runtime;
