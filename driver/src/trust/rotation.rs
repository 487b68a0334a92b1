//! Keeping a retired issuing CA in the bundle while certificates it signed may still be in use:
//! pure, the wall clock is passed in (from the injected [`crate::base::clock::Clock`]).
//!
//! # The rule
//!
//! When a volume's issuing CA changes (its `ca.crt` after an issuance no longer holds a CA the
//! bundle carried), each CA that left is kept until
//!
//! ```text
//! keep_until = min( ca.notAfter,
//!                   max( rotated_at + requested_duration,
//!                        latest notAfter of certificates known to be signed by it ) )
//! ```
//!
//! Why: a certificate the old CA signed was issued no later than the rotation was noticed and an
//! issuer never signs for longer than requested (cert-manager and the CSR API cap, never extend),
//! so no such certificate, ours or a peer's issued under the same volume spec, outlives
//! `rotated_at + requested_duration`. A certificate we know about (e.g. this volume's previous
//! leaf) can only lengthen the overlap. Nothing the old CA signed verifies after the CA itself
//! expires, so its `notAfter` caps the overlap. Once `keep_until` has passed the CA leaves the
//! bundle; `next_change` tells the volume when to rewrite it.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::bundle::{self, RejectReason};

/// One issuing CA the bundle carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuingCa {
    pub der: Vec<u8>,
    pub not_after: SystemTime,
    /// `None` while the CA is current; once retired, when it leaves the bundle.
    pub keep_until: Option<SystemTime>,
}

/// What decides how long a retired CA stays (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OverlapPolicy {
    /// The validity the volume requests for its certificates.
    pub requested_duration: Duration,
    /// The latest `notAfter` of certificates known to be signed by the CAs being retired (the
    /// volume's previous leaf), if known.
    pub latest_known_leaf: Option<SystemTime>,
}

/// The issuing CA text could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum RotationError {
    #[error("the issuing CA's entry {index} {reason}")]
    Entry { index: usize, reason: RejectReason },
    #[error("the issuing CA's entry {index} has no readable notAfter")]
    Validity { index: usize },
}

fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The issuing CAs after an issuance whose CA text is `current_ca_pem` (the `ca.crt` content; may
/// hold several certificates, may be empty when the issuer returns none). `previous` is what the
/// last call returned (empty the first time). Current CAs come first in their order in
/// `current_ca_pem`, then retired CAs still within their overlap, in the order they had; expired
/// overlaps are dropped.
pub(crate) fn rotate(
    previous: &[IssuingCa],
    current_ca_pem: &str,
    now: SystemTime,
    policy: OverlapPolicy,
) -> Result<Vec<IssuingCa>, RotationError> {
    let mut out: Vec<IssuingCa> = Vec::new();
    for (index, entry) in bundle::entries(current_ca_pem).into_iter().enumerate() {
        let der = entry.map_err(|reason| RotationError::Entry { index, reason })?;
        if out.iter().any(|c| c.der == der) {
            continue;
        }
        let not_after = not_after(&der).ok_or(RotationError::Validity { index })?;
        out.push(IssuingCa {
            der,
            not_after,
            keep_until: None,
        });
    }
    let overlap_end = {
        let by_duration = now.checked_add(policy.requested_duration).unwrap_or(now);
        match policy.latest_known_leaf {
            Some(leaf) if leaf > by_duration => leaf,
            _ => by_duration,
        }
    };
    for old in previous {
        if out.iter().any(|c| c.der == old.der) {
            continue;
        }
        let keep_until = old
            .keep_until
            .unwrap_or_else(|| overlap_end.min(old.not_after));
        if keep_until > now {
            out.push(IssuingCa {
                keep_until: Some(keep_until),
                ..old.clone()
            });
        }
    }
    Ok(out)
}

/// The CAs still to be in the bundle at `now` (retired ones whose overlap has ended dropped),
/// as PEM in order; for rewriting the bundle when [`next_change`] comes.
pub(crate) fn in_bundle(cas: &[IssuingCa], now: SystemTime) -> String {
    cas.iter()
        .filter(|c| c.keep_until.is_none_or(|t| t > now))
        .map(|c| bundle::der_to_pem(&c.der))
        .collect()
}

/// When the bundle next changes on its own: the earliest end of an overlap still to come.
pub(crate) fn next_change(cas: &[IssuingCa], now: SystemTime) -> Option<SystemTime> {
    cas.iter()
        .filter_map(|c| c.keep_until)
        .filter(|t| *t > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// A CA valid from t0 - 1 day for `days` days.
    fn ca(cn: &str, days: u64) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let start = time::OffsetDateTime::from(t0() - DAY);
        params.not_before = start;
        params.not_after = start + time::Duration::days(days as i64);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    fn policy(duration_days: u32, leaf: Option<SystemTime>) -> OverlapPolicy {
        OverlapPolicy {
            requested_duration: duration_days * DAY,
            latest_known_leaf: leaf,
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        bundle::entries(pem).remove(0).unwrap()
    }

    #[test]
    fn overlap_table() {
        let old_long = ca("old-long", 365); // notAfter t0 + 364d
        let old_short = ca("old-short", 4); // notAfter t0 + 3d
        let new = ca("new", 365);
        // name, old CA, policy, expected keep_until of the old CA (None: dropped at once)
        let rows: Vec<(&str, &str, OverlapPolicy, Option<SystemTime>)> = vec![
            (
                "requested duration decides",
                old_long.as_str(),
                policy(30, None),
                Some(t0() + 30 * DAY),
            ),
            (
                "a known later leaf extends the overlap",
                old_long.as_str(),
                policy(30, Some(t0() + 45 * DAY)),
                Some(t0() + 45 * DAY),
            ),
            (
                "a known earlier leaf does not shorten it",
                old_long.as_str(),
                policy(30, Some(t0() + DAY)),
                Some(t0() + 30 * DAY),
            ),
            (
                "the old CA's notAfter caps it",
                old_short.as_str(),
                policy(30, Some(t0() + 45 * DAY)),
                Some(t0() + 3 * DAY),
            ),
        ];
        for (name, old, policy, want) in rows {
            let first = rotate(&[], old, t0() - DAY, policy).unwrap();
            assert_eq!(first.len(), 1, "{name}");
            assert_eq!(first[0].keep_until, None, "{name}");
            let after = rotate(&first, &new, t0(), policy).unwrap();
            assert_eq!(after[0].der, der(&new), "{name}: the new CA comes first");
            assert_eq!(after[0].keep_until, None, "{name}");
            assert_eq!(after.get(1).and_then(|c| c.keep_until), want, "{name}");
            assert_eq!(
                after.get(1).map(|c| c.der.clone()),
                Some(der(old)),
                "{name}"
            );
        }
    }

    #[test]
    fn retired_ca_leaves_the_bundle_when_its_overlap_ends() {
        let old = ca("old", 365);
        let new = ca("new", 365);
        let p = policy(10, None);
        let before = rotate(&[], &old, t0(), p).unwrap();
        let during = rotate(&before, &new, t0(), p).unwrap();
        assert_eq!(
            in_bundle(&during, t0()),
            format!(
                "{}{}",
                bundle::der_to_pem(&der(&new)),
                bundle::der_to_pem(&der(&old))
            )
        );
        assert_eq!(next_change(&during, t0()), Some(t0() + 10 * DAY));
        // A renewal within the overlap keeps the retirement date as first decided.
        let renewed = rotate(&during, &new, t0() + 5 * DAY, policy(90, None)).unwrap();
        assert_eq!(renewed[1].keep_until, Some(t0() + 10 * DAY));
        // At the end of the overlap only the new CA is left.
        let end = t0() + 10 * DAY;
        assert_eq!(in_bundle(&renewed, end), bundle::der_to_pem(&der(&new)));
        assert_eq!(next_change(&renewed, end), None);
        let later = rotate(&renewed, &new, end, p).unwrap();
        assert_eq!(later.len(), 1);
    }

    #[test]
    fn same_ca_again_and_rollback_and_bad_input() {
        let a = ca("a", 365);
        let b = ca("b", 365);
        let p = policy(10, None);
        let first = rotate(&[], &a, t0(), p).unwrap();
        assert_eq!(rotate(&first, &a, t0() + DAY, p).unwrap(), first);
        // Rolling back to a retired CA makes it current again.
        let rotated = rotate(&first, &b, t0(), p).unwrap();
        let back = rotate(&rotated, &a, t0() + DAY, p).unwrap();
        assert_eq!(back[0].der, der(&a));
        assert_eq!(back[0].keep_until, None);
        assert_eq!(back[1].der, der(&b));
        assert!(back[1].keep_until.is_some());
        // An issuer that returns no CA retires what was there.
        let none = rotate(&first, "", t0(), p).unwrap();
        assert_eq!(none[0].keep_until, Some(t0() + 10 * DAY));
        // A chain of two CAs is kept in order, deduplicated.
        let chain = rotate(&[], &format!("{a}{b}{a}"), t0(), p).unwrap();
        assert_eq!(
            chain.iter().map(|c| c.der.clone()).collect::<Vec<_>>(),
            vec![der(&a), der(&b)]
        );
        let err = rotate(
            &[],
            "-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----\n",
            t0(),
            p,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("entry 0 is a \"RSA PRIVATE KEY\""),
            "{err}"
        );
    }
}
