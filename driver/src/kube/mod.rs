//! Talking to the Kubernetes API: the rate-limited client, Warning events, API discovery and
//! the node's pod watch.

pub(crate) mod client;
pub mod discovery;
pub mod events;
#[cfg(test)]
pub(crate) mod fakeapi;
pub mod pods;
