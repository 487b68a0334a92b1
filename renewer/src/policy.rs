//! The tunable knobs of the renewal policy and how out-of-range values are treated.

use std::fmt;
use std::time::Duration;

/// The smallest backoff base used, so that a zero base cannot turn retries into a busy loop.
const MIN_BACKOFF_BASE: Duration = Duration::from_millis(1);

/// Renewal and retry policy. See the crate documentation for how the fields combine.
///
/// The functions of this crate accept any value: a fraction that is NaN falls back to its default,
/// other fractions are clamped into `[0, 1]`, a zero `backoff_base` is raised to 1 ms and a
/// `backoff_cap` below the base is raised to the base. Use [`Policy::validate`] to reject such
/// values when they come from configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Fraction of the lifetime after which to renew when no renew-before is given (default 2/3).
    pub renew_fraction: f64,
    /// Jitter: renewal moves EARLIER by up to this fraction of the lifetime (default 0.05 = 5%) ...
    pub jitter_fraction: f64,
    /// ... but by no more than this (default 1 hour).
    pub max_jitter: Duration,
    /// Never renew later than this fraction of the lifetime before expiry (default 0.1): the time
    /// kept for retries when the issuer is failing.
    pub min_margin_fraction: f64,
    /// Delay before the first retry of a failed renewal (default 2 s).
    pub backoff_base: Duration,
    /// Largest delay between retries (default 5 min).
    pub backoff_cap: Duration,
}

impl Policy {
    pub const DEFAULT_RENEW_FRACTION: f64 = 2.0 / 3.0;
    pub const DEFAULT_JITTER_FRACTION: f64 = 0.05;
    pub const DEFAULT_MAX_JITTER: Duration = Duration::from_secs(3600);
    pub const DEFAULT_MIN_MARGIN_FRACTION: f64 = 0.1;
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(2);
    pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(300);

    /// Checks that every field is in range, reporting the first one that is not.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let fractions = [
            ("renew_fraction", self.renew_fraction),
            ("jitter_fraction", self.jitter_fraction),
            ("min_margin_fraction", self.min_margin_fraction),
        ];
        for (field, value) in fractions {
            // `contains` is false for NaN, so NaN is rejected too.
            if !(0.0..=1.0).contains(&value) {
                return Err(PolicyError::FractionOutOfRange { field, value });
            }
        }
        if self.backoff_base.is_zero() {
            return Err(PolicyError::ZeroBackoffBase);
        }
        if self.backoff_cap < self.backoff_base {
            return Err(PolicyError::BackoffCapBelowBase {
                base: self.backoff_base,
                cap: self.backoff_cap,
            });
        }
        Ok(())
    }

    pub(crate) fn renew_fraction(&self) -> f64 {
        sanitize_fraction(self.renew_fraction, Self::DEFAULT_RENEW_FRACTION)
    }

    pub(crate) fn jitter_fraction(&self) -> f64 {
        sanitize_fraction(self.jitter_fraction, Self::DEFAULT_JITTER_FRACTION)
    }

    pub(crate) fn min_margin_fraction(&self) -> f64 {
        sanitize_fraction(self.min_margin_fraction, Self::DEFAULT_MIN_MARGIN_FRACTION)
    }

    pub(crate) fn backoff_base(&self) -> Duration {
        self.backoff_base.max(MIN_BACKOFF_BASE)
    }

    pub(crate) fn backoff_cap(&self) -> Duration {
        self.backoff_cap.max(self.backoff_base())
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            renew_fraction: Self::DEFAULT_RENEW_FRACTION,
            jitter_fraction: Self::DEFAULT_JITTER_FRACTION,
            max_jitter: Self::DEFAULT_MAX_JITTER,
            min_margin_fraction: Self::DEFAULT_MIN_MARGIN_FRACTION,
            backoff_base: Self::DEFAULT_BACKOFF_BASE,
            backoff_cap: Self::DEFAULT_BACKOFF_CAP,
        }
    }
}

fn sanitize_fraction(value: f64, default: f64) -> f64 {
    if value.is_nan() {
        default
    } else {
        value.clamp(0.0, 1.0)
    }
}

/// A [`Policy`] field that is out of range.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PolicyError {
    /// A fraction of the certificate lifetime is not a number in `[0, 1]`.
    FractionOutOfRange { field: &'static str, value: f64 },
    /// `backoff_base` is zero, which would retry failed renewals in a busy loop.
    ZeroBackoffBase,
    /// `backoff_cap` is smaller than `backoff_base`.
    BackoffCapBelowBase { base: Duration, cap: Duration },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::FractionOutOfRange { field, value } => write!(
                f,
                "renewal policy: {field} is {value}, but it must be a fraction of the certificate \
                 lifetime between 0 and 1"
            ),
            PolicyError::ZeroBackoffBase => write!(
                f,
                "renewal policy: backoff_base is zero, but it must be a positive duration \
                 (for example 2s)"
            ),
            PolicyError::BackoffCapBelowBase { base, cap } => write!(
                f,
                "renewal policy: backoff_cap ({cap:?}) is smaller than backoff_base ({base:?}); \
                 the cap must be at least the base"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid_and_has_documented_values() {
        let p = Policy::default();
        assert_eq!(p.validate(), Ok(()));
        assert!((p.renew_fraction - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(p.jitter_fraction, 0.05);
        assert_eq!(p.max_jitter, Duration::from_secs(3600));
        assert_eq!(p.min_margin_fraction, 0.1);
        assert_eq!(p.backoff_base, Duration::from_secs(2));
        assert_eq!(p.backoff_cap, Duration::from_secs(300));
    }

    #[test]
    fn validate_rejects_out_of_range_fields() {
        let cases: Vec<(Policy, PolicyError)> = vec![
            (
                Policy {
                    renew_fraction: 1.5,
                    ..Policy::default()
                },
                PolicyError::FractionOutOfRange {
                    field: "renew_fraction",
                    value: 1.5,
                },
            ),
            (
                Policy {
                    jitter_fraction: -0.1,
                    ..Policy::default()
                },
                PolicyError::FractionOutOfRange {
                    field: "jitter_fraction",
                    value: -0.1,
                },
            ),
            (
                Policy {
                    min_margin_fraction: f64::INFINITY,
                    ..Policy::default()
                },
                PolicyError::FractionOutOfRange {
                    field: "min_margin_fraction",
                    value: f64::INFINITY,
                },
            ),
            (
                Policy {
                    backoff_base: Duration::ZERO,
                    ..Policy::default()
                },
                PolicyError::ZeroBackoffBase,
            ),
            (
                Policy {
                    backoff_base: Duration::from_secs(10),
                    backoff_cap: Duration::from_secs(5),
                    ..Policy::default()
                },
                PolicyError::BackoffCapBelowBase {
                    base: Duration::from_secs(10),
                    cap: Duration::from_secs(5),
                },
            ),
        ];
        for (policy, want) in cases {
            assert_eq!(policy.validate(), Err(want), "{policy:?}");
        }
    }

    #[test]
    fn validate_rejects_nan_fraction() {
        let p = Policy {
            renew_fraction: f64::NAN,
            ..Policy::default()
        };
        let err = p.validate().unwrap_err();
        assert!(matches!(
            err,
            PolicyError::FractionOutOfRange { field: "renew_fraction", value } if value.is_nan()
        ));
    }

    #[test]
    fn error_messages_name_field_value_and_accepted_range() {
        let err = PolicyError::FractionOutOfRange {
            field: "jitter_fraction",
            value: 2.0,
        };
        assert_eq!(
            err.to_string(),
            "renewal policy: jitter_fraction is 2, but it must be a fraction of the certificate \
             lifetime between 0 and 1"
        );
        let err = PolicyError::BackoffCapBelowBase {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(5),
        };
        assert_eq!(
            err.to_string(),
            "renewal policy: backoff_cap (5s) is smaller than backoff_base (10s); the cap must be \
             at least the base"
        );
    }

    #[test]
    fn out_of_range_fields_are_sanitized() {
        let p = Policy {
            renew_fraction: f64::NAN,
            jitter_fraction: 7.0,
            min_margin_fraction: -1.0,
            backoff_base: Duration::ZERO,
            backoff_cap: Duration::ZERO,
            ..Policy::default()
        };
        assert_eq!(p.renew_fraction(), Policy::DEFAULT_RENEW_FRACTION);
        assert_eq!(p.jitter_fraction(), 1.0);
        assert_eq!(p.min_margin_fraction(), 0.0);
        assert_eq!(p.backoff_base(), Duration::from_millis(1));
        assert_eq!(p.backoff_cap(), Duration::from_millis(1));
    }
}
