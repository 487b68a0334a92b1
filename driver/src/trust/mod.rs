//! Trust bundles: the CAs a pod should trust, assembled from the issuing CA, ConfigMaps, Secrets,
//! ClusterTrustBundles and the public roots, and kept current.
//!
//! `source` (what a volume asks for, namespace policy) and `bundle` (assembly) and `rotation`
//! (CA overlap) are pure; `watch` is the watch-driven cache of the Kubernetes objects volumes
//! name, at the I/O edge.

pub mod bundle;
pub(crate) mod rotation;
pub mod source;
pub(crate) mod watch;

pub use bundle::{Bundle, Rejected, SourcePem, assemble, public_roots};
pub use rotation::IssuingCa;
pub use source::{ObjectRef, TrustSpec};
pub use watch::{SourceError, TrustCache};
pub(crate) use watch::{TrustLimits, VolumeTrust};
