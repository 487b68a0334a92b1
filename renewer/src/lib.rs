//! When certificates renew: the renewal policy of certvol, with no I/O, no clock reads and no
//! randomness of its own.
//!
//! Everything here is a pure function of its arguments. The caller passes the current time and a
//! uniformly random `sample` in `[0, 1)`, which keeps the policy deterministic under test and lets
//! the driver's single scheduler task own the clock.
//!
//! # Renewal time ([`renew_at`])
//!
//! For a certificate valid from `not_before` to `not_after` (its *lifetime* is the difference):
//!
//! 1. **Target.** With a `renew_before` from the volume, the target is `not_after - renew_before`;
//!    otherwise it is `not_before + renew_fraction * lifetime` (default two thirds, the common
//!    convention that leaves a third of the lifetime to recover from issuer outages).
//! 2. **Safety margin.** The target is pulled back to no later than
//!    `not_after - min_margin_fraction * lifetime` (default 10%), so a tiny `renew_before` cannot
//!    leave the workload without time to retry before the certificate expires.
//! 3. **Jitter.** The result moves *earlier* by `sample * min(jitter_fraction * lifetime,
//!    max_jitter)` (defaults 5% and one hour), so that many certificates issued at the same moment
//!    (a node reboot, a rollout) do not all hit the issuer at the same instant on renewal.
//! 4. **Floor.** The result is never earlier than `not_before`.
//!
//! Jitter only ever moves renewal *earlier* because both limits that matter are upper bounds: the
//! user's `renew_before` promises the certificate is replaced at least that long before expiry, and
//! the safety margin protects the time left for retries. Symmetric jitter would break one of them
//! for half of all certificates; renewing slightly early only costs a slightly shorter use of a
//! certificate. The margin is applied *before* the jitter so that certificates whose target was
//! clamped still spread out instead of all collapsing onto the margin.
//!
//! Degenerate validity (`not_after <= not_before`) renews immediately, at `not_before`.
//!
//! # Retries ([`backoff`], [`retry_at`])
//!
//! A failed renewal is retried after `base * 2^(attempt - 1)`, capped at `backoff_cap`, with
//! "equal jitter": the delay is scaled into `[0.5, 1.0)` of that value, so retries spread out but
//! never collapse to zero. Close to expiry [`retry_at`] retries sooner than the backoff would (at
//! the midpoint of the remaining validity, at least one second away) so the last chances to renew
//! a still-valid certificate are not slept through.
//!
//! # Scheduling ([`DeadlineQueue`])
//!
//! An ordered set of `(deadline, key)` with at most one deadline per key, for a single scheduler
//! task that sleeps until [`DeadlineQueue::next_deadline`] and then handles
//! [`DeadlineQueue::pop_due`].
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use certvol_renewer::{Policy, renew_at};
//!
//! let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! let day = Duration::from_secs(86_400);
//! let policy = Policy::default();
//! // A 90-day certificate renews after 60 days, up to one hour earlier depending on the sample.
//! let at = renew_at(not_before, not_before + 90 * day, None, &policy, 0.5);
//! assert_eq!(at, not_before + 60 * day - Duration::from_secs(1800));
//! ```
//!
//! # Out-of-range inputs
//!
//! The functions never panic and never overflow. A `sample` that is NaN or below 0 is treated as
//! 0, one at or above 1 (including infinity) as the largest value below 1. Policy fields that are
//! out of range are clamped as documented on [`Policy`]; [`Policy::validate`] reports them so
//! configuration errors can be shown to the user instead of silently clamped.

#![forbid(unsafe_code)]

mod policy;
mod queue;
mod schedule;

pub use policy::{Policy, PolicyError};
pub use queue::DeadlineQueue;
pub use schedule::{MIN_RETRY_SPACING, backoff, renew_at, retry_at};
