//! Operator limits on what one volume or one pod may ask of the node, whatever its attributes.
//!
//! A tenant's volume must not be able to make the node renew every few seconds (a very short
//! duration keeps renewal slots and the API busy), hold a certificate longer than the operator
//! wants, or declare so many volumes that one pod costs the node what a hundred do. The checks
//! run at publish only: a volume published under older limits keeps renewing as it was asked
//! after the operator tightens them (re-checking at every renewal would take a live pod's
//! certificate away at a restart of the driver).

use std::collections::HashMap;
use std::time::Duration;

use crate::spec::attrs;
use crate::spec::request::CertRequest;

/// What one volume or pod may ask of the node (`--min-duration`, `--max-duration`,
/// `--max-volumes-per-pod`, whose defaults are written on the command line, `node::NodeOptions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub min_duration: Duration,
    pub max_duration: Duration,
    pub max_volumes_per_pod: usize,
}

/// The command line's defaults, for the tests here.
#[cfg(test)]
impl Default for Limits {
    fn default() -> Self {
        crate::node::NodeOptions::new("unix:///csi/csi.sock", "n", "/var/lib/certvol".into())
            .limits()
    }
}

/// Why a volume is outside the operator's limits; the message names the attribute (or the pod),
/// the value, the limit and the flag that sets it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    #[error(transparent)]
    Duration(Box<DurationOutside>),
    #[error(
        "pod {pod} already has {count} certvol volumes on this node, the most this node allows (--max-volumes-per-pod {max}); accepted: at most {max} certvol volumes per pod"
    )]
    TooManyVolumes {
        pod: String,
        count: usize,
        max: usize,
    },
}

/// A duration below `--min-duration` or above `--max-duration`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{attribute} {value} is {relation} the {bound} {limit} this node allows (--{flag}); accepted: a duration from {min} to {max}",
    limit = go_text(*limit),
    min = go_text(*min),
    max = go_text(*max)
)]
pub struct DurationOutside {
    pub attribute: String,
    pub value: String,
    relation: &'static str,
    bound: &'static str,
    pub limit: Duration,
    flag: &'static str,
    min: Duration,
    max: Duration,
}

impl Limits {
    /// The request's duration against the node's floor and ceiling. `ctx` is the volume context,
    /// only to name the attribute as the pod spec wrote it.
    pub fn check_duration(
        &self,
        req: &CertRequest,
        ctx: &HashMap<String, String>,
    ) -> Result<(), LimitError> {
        let (relation, bound, limit, flag) = if req.duration < self.min_duration {
            ("shorter than", "minimum", self.min_duration, "min-duration")
        } else if req.duration > self.max_duration {
            ("longer than", "maximum", self.max_duration, "max-duration")
        } else {
            return Ok(());
        };
        let (attribute, value) = match attrs::set_key(ctx, "duration") {
            Some(key) => (key.to_owned(), format!("{:?}", ctx[key])),
            None => (
                format!("{}duration", attrs::CERT_MANAGER_PREFIX),
                format!("(not set, so the default {})", go_text(req.duration)),
            ),
        };
        Err(LimitError::Duration(Box::new(DurationOutside {
            attribute,
            value,
            relation,
            bound,
            limit,
            flag,
            min: self.min_duration,
            max: self.max_duration,
        })))
    }

    /// Whether a pod holding `count` certvol volumes may publish one more.
    pub fn check_volume_count(&self, pod: &str, count: usize) -> Result<(), LimitError> {
        if count < self.max_volumes_per_pod {
            return Ok(());
        }
        Err(LimitError::TooManyVolumes {
            pod: pod.to_owned(),
            count,
            max: self.max_volumes_per_pod,
        })
    }
}

/// A duration as a Go duration string (`"1h"`, `"90m"`, `"1h0m30s"`, `"500ms"`), the form the
/// attributes and flags take.
fn go_text(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, 0) => format!("{h}h{m}m"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([
                ("csi.cert-manager.io/issuer-name".into(), "ca".into()),
                (
                    "csi.cert-manager.io/dns-names".into(),
                    "a.example.com".into(),
                ),
                ("csi.storage.k8s.io/pod.name".into(), "p".into()),
                ("csi.storage.k8s.io/pod.namespace".into(), "ns".into()),
            ])
            .collect()
    }

    fn check(limits: &Limits, pairs: &[(&str, &str)]) -> Result<(), String> {
        let c = ctx(pairs);
        let req = attrs::parse(&c).unwrap();
        limits.check_duration(&req, &c).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_against_the_floor_and_ceiling() {
        let limits = Limits::default();
        // (attributes, expected error fragment or None for accepted)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let table: &[Case] = &[
            (&[], None),
            (&[("csi.cert-manager.io/duration", "1h")], None),
            (&[("csi.cert-manager.io/duration", "8760h")], None),
            (
                &[("csi.cert-manager.io/duration", "59m59s")],
                Some(
                    "csi.cert-manager.io/duration \"59m59s\" is shorter than the minimum 1h this node allows (--min-duration); accepted: a duration from 1h to 8760h",
                ),
            ),
            (
                &[
                    ("csi.certvol.io/duration", "6s"),
                    ("csi.cert-manager.io/duration", "2h"),
                ],
                Some("csi.certvol.io/duration \"6s\" is shorter than the minimum 1h"),
            ),
            (
                &[("csi.cert-manager.io/duration", "8761h")],
                Some(
                    "\"8761h\" is longer than the maximum 8760h this node allows (--max-duration)",
                ),
            ),
        ];
        for (pairs, want) in table {
            let got = check(&limits, pairs);
            match want {
                None => assert_eq!(got, Ok(()), "{pairs:?}"),
                Some(fragment) => {
                    let err = got.expect_err(&format!("{pairs:?} must be refused"));
                    assert!(err.contains(fragment), "{pairs:?}: {err}");
                }
            }
        }
    }

    #[test]
    fn an_unset_duration_is_named_with_the_default_that_applies() {
        let limits = Limits {
            max_duration: Duration::from_secs(720 * 3600),
            ..Limits::default()
        };
        let err = check(&limits, &[]).unwrap_err();
        assert!(
            err.contains("csi.cert-manager.io/duration (not set, so the default 2160h) is longer than the maximum 720h"),
            "{err}"
        );
    }

    #[test]
    fn volumes_per_pod() {
        let limits = Limits {
            max_volumes_per_pod: 2,
            ..Limits::default()
        };
        assert!(limits.check_volume_count("ns/p", 1).is_ok());
        let err = limits
            .check_volume_count("ns/p", 2)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "pod ns/p already has 2 certvol volumes on this node, the most this node allows (--max-volumes-per-pod 2); accepted: at most 2 certvol volumes per pod"
        );
    }

    #[test]
    fn go_text_round_trips_through_the_attribute_parser() {
        for d in [1, 59, 60, 90, 3600, 3661, 5400, 8760 * 3600] {
            let d = Duration::from_secs(d);
            assert_eq!(attrs::parse_duration(&go_text(d)), Ok(d), "{}", go_text(d));
        }
        assert_eq!(go_text(Duration::from_millis(1500)), "1500ms");
    }
}
