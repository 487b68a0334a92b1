//! Background loops: the renewal scheduler and the trust-bundle refresher.

pub mod refresh;
pub mod scheduler;
