//! The node's disk: issued material laid out as files, the `..data` swap, tmpfs and bind
//! mounts, the per-volume metadata store and the tmpfs memory budget.

pub(crate) mod budget;
pub(crate) mod fsutil;
pub(crate) mod layout;
pub mod mount;
pub mod store;
pub mod writer;
