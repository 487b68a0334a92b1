//! Renewal times and retry delays.

use std::time::{Duration, SystemTime};

use crate::Policy;

/// The shortest time [`retry_at`] waits when it retries sooner than the backoff because the
/// certificate is about to expire; it keeps an issuer that fails instantly from being hammered.
pub const MIN_RETRY_SPACING: Duration = Duration::from_secs(1);

/// The largest `f64` below 1, what a `sample` of 1 or more is clamped to.
const MAX_SAMPLE: f64 = 1.0 - f64::EPSILON / 2.0;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// When to renew a certificate valid from `not_before` to `not_after`.
///
/// The target is `not_after - renew_before` when `renew_before` is given, else
/// `not_before + renew_fraction * lifetime`. It is pulled back to no later than
/// `not_after - min_margin_fraction * lifetime`, then moved earlier by the jitter
/// `sample * min(jitter_fraction * lifetime, max_jitter)`, and finally kept no earlier than
/// `not_before`. The result is therefore never later than the target nor the margin, whatever
/// the sample. A `renew_before` as long as the lifetime or longer renews at `not_before`.
///
/// Degenerate inputs (`not_after <= not_before`) return `not_before`: renew immediately.
/// `sample` is clamped into `[0, 1)` (NaN counts as 0).
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
    policy: &Policy,
    sample: f64,
) -> SystemTime {
    let lifetime = match not_after.duration_since(not_before) {
        Ok(lifetime) if !lifetime.is_zero() => lifetime,
        _ => return not_before,
    };
    // Work in offsets from `not_before`: each is at most `lifetime`, so no step can overflow.
    let target = match renew_before {
        Some(renew_before) => lifetime.saturating_sub(renew_before),
        None => scale(lifetime, policy.renew_fraction()),
    };
    let latest = lifetime.saturating_sub(scale(lifetime, policy.min_margin_fraction()));
    let max_jitter = scale(lifetime, policy.jitter_fraction()).min(policy.max_jitter);
    let jitter = scale(max_jitter, clamp_sample(sample));
    let offset = target.min(latest).saturating_sub(jitter);
    // `offset <= lifetime` and `not_before + lifetime == not_after` is representable, so the
    // fallback cannot be taken; it only avoids a panic path.
    not_before.checked_add(offset).unwrap_or(not_before)
}

/// Delay before retry number `attempt` (1 = first retry; 0 counts as 1) after a failed renewal.
///
/// The exponential `backoff_base * 2^(attempt - 1)`, capped at `backoff_cap`, is scaled into
/// `[0.5, 1.0]` of itself by `sample` ("equal jitter"): retries of many certificates spread out,
/// yet no delay is shorter than half the exponential value. The result is never zero, never above
/// the cap and never overflows, whatever `attempt` is. `sample` is clamped into `[0, 1)`.
pub fn backoff(attempt: u32, policy: &Policy, sample: f64) -> Duration {
    let cap = policy.backoff_cap();
    let mut delay = policy.backoff_base();
    // Doubling stops at the cap, so this runs at most ~100 times (a Duration has < 2^100 ns)
    // even for `attempt == u32::MAX`.
    for _ in 1..attempt {
        if delay >= cap {
            break;
        }
        delay = delay.saturating_mul(2);
    }
    let delay = delay.min(cap);
    let half = delay / 2;
    (delay - half) + scale(half, clamp_sample(sample))
}

/// When to retry a failed renewal of a certificate that expires at `not_after`.
///
/// Normally `now + backoff(attempt, policy, sample)`. While the certificate is still valid
/// (`now < not_after`) but that retry would come at or after `not_after`, it retries sooner: at
/// the midpoint between `now` and `not_after`, but at least [`MIN_RETRY_SPACING`] from now (and
/// never later than the backoff would). Repeated failures thus retry ever more often as expiry
/// approaches instead of sleeping through the last chances to renew.
pub fn retry_at(
    now: SystemTime,
    not_after: SystemTime,
    attempt: u32,
    policy: &Policy,
    sample: f64,
) -> SystemTime {
    let delay = backoff(attempt, policy, sample);
    let delay = match not_after.duration_since(now) {
        Ok(remaining) if !remaining.is_zero() && delay >= remaining => {
            (remaining / 2).max(MIN_RETRY_SPACING).min(delay)
        }
        // Plenty of time left, or already expired: nothing to race against.
        _ => delay,
    };
    // Overflow would need `now` within minutes of the end of representable time; retrying
    // immediately is the only sensible answer there.
    now.checked_add(delay).unwrap_or(now)
}

/// Clamps a caller's random sample into `[0, 1)`; NaN counts as 0.
fn clamp_sample(sample: f64) -> f64 {
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(0.0, MAX_SAMPLE)
    }
}

/// `d * fraction`, rounded to the nanosecond, for `fraction` in `[0, 1]`; never more than `d`.
fn scale(d: Duration, fraction: f64) -> Duration {
    let nanos = d.as_nanos();
    // f64 keeps nanosecond precision for durations up to ~104 days and is within a few
    // nanoseconds beyond that, which is far below anything a schedule can observe. The `as`
    // casts saturate, and the `min` keeps rounding from ever exceeding `d`.
    let scaled = ((nanos as f64) * fraction.clamp(0.0, 1.0)).round() as u128;
    from_nanos(scaled.min(nanos))
}

/// Builds a Duration from nanoseconds; saturates at `Duration::MAX` (unreachable from `scale`,
/// whose result is at most an existing Duration).
fn from_nanos(nanos: u128) -> Duration {
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);
    /// The largest sample a caller can pass.
    const ALMOST_ONE: f64 = MAX_SAMPLE;

    fn epoch() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// Floating point makes fraction-of-lifetime results exact only to a few nanoseconds.
    fn assert_close(got: Duration, want: Duration, what: &str) {
        let diff = got.abs_diff(want);
        assert!(
            diff <= Duration::from_micros(1),
            "{what}: got {got:?}, want {want:?}"
        );
    }

    /// The offset from `not_before` at which a certificate starting at `epoch()` renews.
    fn renew_offset(
        lifetime: Duration,
        renew_before: Option<Duration>,
        policy: &Policy,
        sample: f64,
    ) -> Duration {
        let nb = epoch();
        let at = renew_at(nb, nb + lifetime, renew_before, policy, sample);
        at.duration_since(nb)
            .expect("renewal must not be before not_before")
    }

    #[test]
    fn renew_at_table() {
        struct Case {
            name: &'static str,
            lifetime: Duration,
            renew_before: Option<Duration>,
            policy: Policy,
            sample: f64,
            want: Duration,
        }
        let d = Policy::default;
        let cases = [
            Case {
                name: "30d default 2/3, no jitter",
                lifetime: 30 * DAY,
                renew_before: None,
                policy: d(),
                sample: 0.0,
                want: 20 * DAY,
            },
            Case {
                name: "30d default 2/3, full jitter is capped at 1h",
                lifetime: 30 * DAY,
                renew_before: None,
                policy: d(),
                sample: ALMOST_ONE,
                want: 20 * DAY - HOUR,
            },
            Case {
                name: "30d renew-before 7d",
                lifetime: 30 * DAY,
                renew_before: Some(7 * DAY),
                policy: d(),
                sample: 0.0,
                want: 23 * DAY,
            },
            Case {
                name: "30d renew-before 7d, full jitter",
                lifetime: 30 * DAY,
                renew_before: Some(7 * DAY),
                policy: d(),
                sample: ALMOST_ONE,
                want: 23 * DAY - HOUR,
            },
            Case {
                name: "1h cert: jitter is 5% of lifetime (below the 1h cap)",
                lifetime: HOUR,
                renew_before: None,
                policy: d(),
                sample: ALMOST_ONE,
                want: secs(2400 - 180),
            },
            Case {
                name: "1h cert: half jitter",
                lifetime: HOUR,
                renew_before: None,
                policy: d(),
                sample: 0.5,
                want: secs(2400 - 90),
            },
            Case {
                name: "90d cert, no jitter",
                lifetime: 90 * DAY,
                renew_before: None,
                policy: d(),
                sample: 0.0,
                want: 60 * DAY,
            },
            Case {
                name: "90d cert: jitter capped by max_jitter (5% would be 4.5 days)",
                lifetime: 90 * DAY,
                renew_before: None,
                policy: d(),
                sample: ALMOST_ONE,
                want: 60 * DAY - HOUR,
            },
            Case {
                name: "90d cert: half jitter is half of the cap",
                lifetime: 90 * DAY,
                renew_before: None,
                policy: d(),
                sample: 0.5,
                want: 60 * DAY - 30 * MIN,
            },
            Case {
                name: "90d cert: a larger max_jitter allows 5%",
                lifetime: 90 * DAY,
                renew_before: None,
                policy: Policy {
                    max_jitter: 30 * DAY,
                    ..d()
                },
                sample: ALMOST_ONE,
                want: 60 * DAY - 4 * DAY - 12 * HOUR,
            },
            Case {
                name: "tiny renew-before is clamped to the 10% margin",
                lifetime: 30 * DAY,
                renew_before: Some(MIN),
                policy: d(),
                sample: 0.0,
                want: 27 * DAY,
            },
            Case {
                name: "margin-clamped renewals still spread out with jitter",
                lifetime: 30 * DAY,
                renew_before: Some(MIN),
                policy: d(),
                sample: ALMOST_ONE,
                want: 27 * DAY - HOUR,
            },
            Case {
                name: "renew-before zero is clamped to the margin",
                lifetime: 30 * DAY,
                renew_before: Some(Duration::ZERO),
                policy: d(),
                sample: 0.0,
                want: 27 * DAY,
            },
            Case {
                name: "renew-before equal to lifetime renews at not_before",
                lifetime: 30 * DAY,
                renew_before: Some(30 * DAY),
                policy: d(),
                sample: 0.0,
                want: Duration::ZERO,
            },
            Case {
                name: "renew-before beyond lifetime renews at not_before, even with jitter",
                lifetime: 30 * DAY,
                renew_before: Some(365 * DAY),
                policy: d(),
                sample: ALMOST_ONE,
                want: Duration::ZERO,
            },
            Case {
                name: "jitter cannot move renewal before not_before",
                lifetime: 30 * DAY,
                renew_before: Some(30 * DAY - MIN),
                policy: d(),
                sample: ALMOST_ONE,
                want: Duration::ZERO,
            },
            Case {
                name: "1-minute cert default",
                lifetime: MIN,
                renew_before: None,
                policy: d(),
                sample: 0.0,
                want: secs(40),
            },
            Case {
                name: "1-minute cert full jitter (5% = 3s)",
                lifetime: MIN,
                renew_before: None,
                policy: d(),
                sample: ALMOST_ONE,
                want: secs(37),
            },
            Case {
                name: "1-minute cert renew-before 30s",
                lifetime: MIN,
                renew_before: Some(secs(30)),
                policy: d(),
                sample: 0.0,
                want: secs(30),
            },
            Case {
                name: "1-minute cert renew-before 1s is clamped to the 6s margin",
                lifetime: MIN,
                renew_before: Some(secs(1)),
                policy: d(),
                sample: 0.0,
                want: secs(54),
            },
            Case {
                name: "renew_fraction past the margin is clamped",
                lifetime: 30 * DAY,
                renew_before: None,
                policy: Policy {
                    renew_fraction: 0.95,
                    ..d()
                },
                sample: 0.0,
                want: 27 * DAY,
            },
            Case {
                name: "zero jitter fraction ignores the sample",
                lifetime: 30 * DAY,
                renew_before: None,
                policy: Policy {
                    jitter_fraction: 0.0,
                    ..d()
                },
                sample: ALMOST_ONE,
                want: 20 * DAY,
            },
            Case {
                name: "zero max_jitter ignores the sample",
                lifetime: 30 * DAY,
                renew_before: None,
                policy: Policy {
                    max_jitter: Duration::ZERO,
                    ..d()
                },
                sample: ALMOST_ONE,
                want: 20 * DAY,
            },
            Case {
                name: "NaN renew_fraction falls back to the default 2/3",
                lifetime: 30 * DAY,
                renew_before: None,
                policy: Policy {
                    renew_fraction: f64::NAN,
                    ..d()
                },
                sample: 0.0,
                want: 20 * DAY,
            },
        ];
        for c in cases {
            let got = renew_offset(c.lifetime, c.renew_before, &c.policy, c.sample);
            assert_close(got, c.want, c.name);
        }
    }

    #[test]
    fn renew_at_degenerate_validity_renews_immediately() {
        let nb = epoch();
        for not_after in [nb, nb - secs(1), nb - 365 * DAY] {
            for rb in [None, Some(Duration::ZERO), Some(DAY)] {
                for sample in [0.0, 0.5, ALMOST_ONE] {
                    let at = renew_at(nb, not_after, rb, &Policy::default(), sample);
                    assert_eq!(at, nb, "not_after={not_after:?} rb={rb:?} sample={sample}");
                }
            }
        }
    }

    #[test]
    fn renew_at_clamps_out_of_range_samples() {
        let p = Policy::default();
        let at = |s: f64| renew_offset(30 * DAY, None, &p, s);
        for low in [f64::NAN, -0.5, -1e300, f64::NEG_INFINITY] {
            assert_eq!(at(low), at(0.0), "sample {low}");
        }
        for high in [1.0, 1.5, f64::INFINITY] {
            assert_eq!(at(high), at(ALMOST_ONE), "sample {high}");
        }
    }

    #[test]
    fn renew_at_with_extreme_times_does_not_panic() {
        let nb = SystemTime::UNIX_EPOCH;
        let na = nb + Duration::from_secs(u64::MAX / 4);
        let p = Policy::default();
        let at = renew_at(nb, na, None, &p, ALMOST_ONE);
        assert!(at > nb && at < na);
        assert_eq!(renew_at(nb, na, Some(Duration::MAX), &p, 0.5), nb);
    }

    /// Over a deterministic grid of lifetimes, renew-befores, policies and samples: renewal is
    /// within `[not_before, not_after - margin]`, never later than the target, and a larger sample
    /// never renews later.
    #[test]
    fn renew_at_property_grid() {
        let lifetimes = [
            Duration::from_nanos(1),
            millis(999),
            secs(1),
            MIN,
            HOUR + Duration::from_nanos(7),
            DAY,
            90 * DAY,
            397 * DAY + secs(13),
            3650 * DAY,
        ];
        let policies = [
            Policy::default(),
            Policy {
                renew_fraction: 1.0,
                jitter_fraction: 1.0,
                max_jitter: Duration::MAX,
                min_margin_fraction: 0.0,
                ..Policy::default()
            },
            Policy {
                renew_fraction: 0.0,
                jitter_fraction: 0.3,
                max_jitter: MIN,
                min_margin_fraction: 0.5,
                ..Policy::default()
            },
            Policy {
                min_margin_fraction: 1.0,
                ..Policy::default()
            },
        ];
        let samples: Vec<f64> = (0..=64)
            .map(|i| f64::from(i) / 64.0)
            .chain([ALMOST_ONE])
            .collect();
        let nb = epoch();
        let mut checked = 0;
        for &lifetime in &lifetimes {
            let na = nb + lifetime;
            let renew_befores = [
                None,
                Some(Duration::ZERO),
                Some(lifetime / 1000),
                Some(lifetime / 3),
                Some(lifetime),
                Some(lifetime * 2),
            ];
            for policy in &policies {
                // Computed independently of `renew_at`, with a nanosecond of slack for rounding.
                let margin = lifetime.mul_f64(policy.min_margin_fraction);
                let latest = na - margin + Duration::from_nanos(1);
                for &rb in &renew_befores {
                    let target = match rb {
                        Some(rb) => na.checked_sub(rb).unwrap_or(nb).max(nb),
                        None => nb + lifetime.mul_f64(policy.renew_fraction),
                    } + Duration::from_nanos(1);
                    let mut previous = None;
                    for &sample in &samples {
                        let at = renew_at(nb, na, rb, policy, sample);
                        let ctx =
                            format!("lifetime={lifetime:?} rb={rb:?} sample={sample} {policy:?}");
                        assert!(at >= nb, "before not_before: {ctx}");
                        assert!(at <= latest, "inside the safety margin: {ctx}");
                        assert!(at <= target, "later than the target: {ctx}");
                        if let Some(prev) = previous {
                            assert!(at <= prev, "larger sample renewed later: {ctx}");
                        }
                        previous = Some(at);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(
            checked,
            lifetimes.len() * policies.len() * 6 * samples.len()
        );
    }

    #[test]
    fn backoff_sequence_with_and_without_jitter() {
        let p = Policy::default();
        // attempt, full exponential delay (2s * 2^(attempt-1), capped at 300s)
        let table = [
            (0, 2),
            (1, 2),
            (2, 4),
            (3, 8),
            (4, 16),
            (5, 32),
            (6, 64),
            (7, 128),
            (8, 256),
            (9, 300),
            (10, 300),
            (64, 300),
            (65, 300),
            (1000, 300),
            (u32::MAX, 300),
        ];
        for (attempt, full) in table {
            let full = secs(full);
            assert_eq!(
                backoff(attempt, &p, 0.0),
                full / 2,
                "attempt {attempt} sample 0"
            );
            assert_close(
                backoff(attempt, &p, 0.5),
                full * 3 / 4,
                &format!("attempt {attempt} sample 0.5"),
            );
            let high = backoff(attempt, &p, ALMOST_ONE);
            assert!(high <= full, "attempt {attempt}: {high:?} above {full:?}");
            assert_close(high, full, &format!("attempt {attempt} sample ~1"));
        }
    }

    #[test]
    fn backoff_jitter_stays_in_half_to_full_range_and_never_zero() {
        let policies = [
            Policy::default(),
            Policy {
                backoff_base: Duration::from_nanos(3),
                backoff_cap: Duration::from_nanos(7),
                ..Policy::default()
            },
            Policy {
                backoff_base: Duration::ZERO,
                backoff_cap: Duration::ZERO,
                ..Policy::default()
            },
            Policy {
                backoff_base: secs(1),
                backoff_cap: Duration::MAX,
                ..Policy::default()
            },
        ];
        for p in &policies {
            let cap = p.backoff_cap.max(p.backoff_base).max(millis(1));
            for attempt in [1, 2, 5, 20, 100, u32::MAX] {
                let mut previous = Duration::ZERO;
                for i in 0..=100 {
                    let sample = f64::from(i) / 100.0;
                    let d = backoff(attempt, p, sample);
                    let ctx = format!("{p:?} attempt={attempt} sample={sample}");
                    assert!(!d.is_zero(), "zero delay: {ctx}");
                    assert!(d <= cap, "above the cap: {d:?} {ctx}");
                    assert!(
                        d >= backoff(attempt, p, 0.0),
                        "below the jitter floor: {ctx}"
                    );
                    assert!(d >= previous, "not monotonic in the sample: {ctx}");
                    previous = d;
                }
            }
        }
    }

    #[test]
    fn backoff_huge_cap_and_attempt_saturates_without_overflow() {
        let p = Policy {
            backoff_base: secs(1),
            backoff_cap: Duration::MAX,
            ..Policy::default()
        };
        let d = backoff(u32::MAX, &p, 0.0);
        assert!(d >= Duration::MAX / 2 - secs(1), "{d:?}");
        assert!(backoff(u32::MAX, &p, ALMOST_ONE) <= Duration::MAX);
    }

    #[test]
    fn backoff_zero_base_is_raised_to_one_millisecond() {
        let p = Policy {
            backoff_base: Duration::ZERO,
            ..Policy::default()
        };
        assert_eq!(backoff(1, &p, 0.0), Duration::from_micros(500));
        assert_eq!(backoff(2, &p, 0.0), millis(1));
    }

    #[test]
    fn backoff_clamps_out_of_range_samples() {
        let p = Policy::default();
        for low in [f64::NAN, -3.0, f64::NEG_INFINITY] {
            assert_eq!(backoff(4, &p, low), secs(8));
        }
        for high in [1.0, 7.0, f64::INFINITY] {
            assert_eq!(backoff(4, &p, high), backoff(4, &p, ALMOST_ONE));
        }
    }

    #[test]
    fn retry_at_table() {
        struct Case {
            name: &'static str,
            /// not_after minus now; negative means already expired.
            remaining: i64,
            remaining_extra_ms: u64,
            attempt: u32,
            policy: Policy,
            want: Duration,
        }
        let d = Policy::default;
        // sample 0 throughout: backoff is exactly half of 2s * 2^(attempt-1), capped at 300s.
        let cases = [
            Case {
                name: "far from expiry: plain backoff",
                remaining: 86_400,
                remaining_extra_ms: 0,
                attempt: 1,
                policy: d(),
                want: secs(1),
            },
            Case {
                name: "far from expiry: capped backoff",
                remaining: 86_400,
                remaining_extra_ms: 0,
                attempt: 50,
                policy: d(),
                want: secs(150),
            },
            Case {
                name: "backoff fits before expiry",
                remaining: 100,
                remaining_extra_ms: 0,
                attempt: 3,
                policy: d(),
                want: secs(4),
            },
            Case {
                name: "backoff would pass expiry: midpoint",
                remaining: 100,
                remaining_extra_ms: 0,
                attempt: 9,
                policy: d(),
                want: secs(50),
            },
            Case {
                name: "backoff lands exactly on expiry: midpoint",
                remaining: 4,
                remaining_extra_ms: 0,
                attempt: 3,
                policy: d(),
                want: secs(2),
            },
            Case {
                name: "1.5s left: at least 1s",
                remaining: 1,
                remaining_extra_ms: 500,
                attempt: 9,
                policy: d(),
                want: secs(1),
            },
            Case {
                name: "0.5s left: still at least 1s",
                remaining: 0,
                remaining_extra_ms: 500,
                attempt: 9,
                policy: d(),
                want: secs(1),
            },
            Case {
                name: "short backoff below the 1s floor is kept when it fits",
                remaining: 0,
                remaining_extra_ms: 500,
                attempt: 1,
                policy: Policy {
                    backoff_base: millis(100),
                    ..d()
                },
                want: millis(50),
            },
            Case {
                name: "sooner retry is never later than the backoff",
                remaining: 0,
                remaining_extra_ms: 100,
                attempt: 1,
                policy: Policy {
                    backoff_base: millis(400),
                    ..d()
                },
                want: millis(200),
            },
            Case {
                name: "expiring right now: plain backoff",
                remaining: 0,
                remaining_extra_ms: 0,
                attempt: 9,
                policy: d(),
                want: secs(150),
            },
            Case {
                name: "already expired: plain backoff",
                remaining: -3600,
                remaining_extra_ms: 0,
                attempt: 9,
                policy: d(),
                want: secs(150),
            },
        ];
        let now = epoch();
        for c in cases {
            let not_after = if c.remaining >= 0 {
                now + secs(c.remaining.unsigned_abs()) + millis(c.remaining_extra_ms)
            } else {
                now - secs(c.remaining.unsigned_abs())
            };
            let at = retry_at(now, not_after, c.attempt, &c.policy, 0.0);
            assert_eq!(at.duration_since(now).ok(), Some(c.want), "{}", c.name);
        }
    }

    /// A renewal that keeps failing from an hour before expiry: no retry while more than 1s of
    /// validity is left is scheduled at or after expiry, retries are at least 1s apart, and the
    /// last one before expiry comes within a second of it.
    #[test]
    fn retry_at_keeps_trying_until_expiry() {
        let p = Policy::default();
        let not_after = epoch() + HOUR;
        let mut now = epoch();
        let mut last_before_expiry = now;
        for attempt in 1..10_000u32 {
            let sample = f64::from(attempt % 10) / 10.0;
            let next = retry_at(now, not_after, attempt, &p, sample);
            let spacing = next.duration_since(now).expect("retry goes forward");
            let remaining = not_after.duration_since(now).expect("still valid");
            assert!(
                spacing >= MIN_RETRY_SPACING.min(remaining),
                "attempt {attempt}"
            );
            if remaining > MIN_RETRY_SPACING {
                assert!(next < not_after, "attempt {attempt} slept through expiry");
            }
            if next >= not_after {
                break;
            }
            now = next;
            last_before_expiry = now;
        }
        let gap = not_after
            .duration_since(last_before_expiry)
            .expect("before expiry");
        assert!(gap <= MIN_RETRY_SPACING, "last retry {gap:?} before expiry");
    }

    #[test]
    fn retry_at_near_end_of_time_does_not_panic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        let p = Policy {
            backoff_cap: Duration::MAX,
            ..Policy::default()
        };
        let at = retry_at(now, now - secs(1), u32::MAX, &p, ALMOST_ONE);
        assert!(at >= now);
    }
}
