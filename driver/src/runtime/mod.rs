//! Background loops: the renewal scheduler and the trust-bundle refresher.

pub(crate) mod refresh;
pub(crate) mod scheduler;
