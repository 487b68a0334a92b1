//! Value parsers the steps share: comma-separated lists, `${POD_NAME}`-style variables, Go
//! durations, booleans and group ids.

use std::time::Duration;

use super::context::{Attr, Attrs, invalid};
use super::{
    AttrError, DEFAULT_DURATION, DEFAULT_DURATION_TEXT, POD_NAME_KEY, POD_NAMESPACE_KEY,
    POD_UID_KEY, SERVICE_ACCOUNT_KEY, VARIABLES_HELP,
};
use crate::spec::request::PodInfo;

/// `duration` (cert-manager's default when unset) and `renew-before`, which must be shorter.
pub(super) fn parse_lifetime(attrs: &Attrs<'_>) -> Result<(Duration, Option<Duration>), AttrError> {
    let (duration, duration_text) = match attrs.get("duration") {
        Some(a) => (duration_attr(a)?, format!("{:?}", a.value)),
        None => (
            DEFAULT_DURATION,
            format!("{DEFAULT_DURATION_TEXT:?} (the default)"),
        ),
    };
    let renew_before = match attrs.get("renew-before") {
        None => None,
        Some(a) => {
            let before = duration_attr(a)?;
            if before >= duration {
                return Err(invalid(
                    a,
                    format!("is not shorter than the certificate duration {duration_text}"),
                    "a Go duration shorter than the certificate duration, such as \"720h\"",
                ));
            }
            Some(before)
        }
    };
    Ok((duration, renew_before))
}

/// A boolean attribute, `default` when unset.
pub(super) fn flag(attrs: &Attrs<'_>, name: &str, default: bool) -> Result<bool, AttrError> {
    Ok(attrs
        .get(name)
        .map(parse_bool)
        .transpose()?
        .unwrap_or(default))
}

/// Comma-separated list: entries trimmed, empty entries dropped.
pub(super) fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Expands `${VAR}` / `$VAR` with the pod's values.
pub(super) fn expand(attr: Attr<'_>, pod: &PodInfo) -> Result<String, AttrError> {
    let mut out = String::with_capacity(attr.value.len());
    let mut rest = attr.value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, len) = if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(invalid(
                    attr,
                    "has a \"${\" without a closing \"}\"",
                    format!("text with the variables {VARIABLES_HELP}"),
                ));
            };
            (&body[..end], end + 2)
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 || after.starts_with(|c: char| c.is_ascii_digit()) {
                // Not a variable reference: keep the dollar sign.
                out.push('$');
                rest = after;
                continue;
            }
            (&after[..len], len)
        };
        let (variable, context_key, value) = match name {
            "POD_NAME" => ("${POD_NAME}", POD_NAME_KEY, &pod.name),
            "POD_NAMESPACE" => ("${POD_NAMESPACE}", POD_NAMESPACE_KEY, &pod.namespace),
            "POD_UID" => ("${POD_UID}", POD_UID_KEY, &pod.uid),
            "SERVICE_ACCOUNT_NAME" => (
                "${SERVICE_ACCOUNT_NAME}",
                SERVICE_ACCOUNT_KEY,
                &pod.service_account,
            ),
            _ => {
                return Err(AttrError::UnknownVariable {
                    attribute: attr.key.to_owned(),
                    variable: rest[pos..pos + 1 + len].to_owned(),
                });
            }
        };
        if value.is_empty() {
            return Err(AttrError::MissingPodInfo {
                attribute: attr.key.to_owned(),
                variable,
                context_key,
            });
        }
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

const DURATION_HELP: &str = "a Go duration such as \"2160h\", \"90m\" or \"1h30m\"";
const BOOL_HELP: &str = "\"true\" or \"false\"";

enum DurationError {
    Syntax,
    NotPositive,
    TooLong,
}

fn duration_problem(e: DurationError) -> &'static str {
    match e {
        DurationError::Syntax => "is not a valid duration",
        DurationError::NotPositive => "is not a positive duration",
        DurationError::TooLong => "is longer than the maximum of 2562047h",
    }
}

fn duration_attr(attr: Attr<'_>) -> Result<Duration, AttrError> {
    go_duration(attr.value).map_err(|e| invalid(attr, duration_problem(e), DURATION_HELP))
}

/// Parses a positive Go duration (`"20s"`, `"1h30m"`) with the same rules as the `duration`
/// attribute, for command-line flags; the error is a one-line message naming the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    go_duration(s).map_err(|e| format!("{s:?} {}; accepted: {DURATION_HELP}", duration_problem(e)))
}

/// Go's `time.ParseDuration` syntax, limited like Go to `i64::MAX` nanoseconds, and positive
/// only: a sign, then number+unit pairs (`1h30m`, `1.5h`, `.5s`), or a bare `0`.
fn go_duration(s: &str) -> Result<Duration, DurationError> {
    const MAX_NANOS: u128 = i64::MAX as u128;
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Err(DurationError::NotPositive);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_digits, r) = rest.split_at(int_len);
        let (frac_digits, r) = match r.strip_prefix('.') {
            Some(r) => r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len())),
            None => ("", r),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DurationError::Syntax);
        }
        let unit_len = r
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::Syntax),
        };
        let mut whole: u128 = 0;
        for d in int_digits.bytes() {
            whole = whole * 10 + u128::from(d - b'0');
            if whole > MAX_NANOS {
                return Err(DurationError::TooLong);
            }
        }
        // Digits past 10^-20 cannot change the nanosecond count of any unit here.
        let (mut frac, mut denom) = (0u128, 1u128);
        for d in frac_digits.bytes().take(20) {
            frac = frac * 10 + u128::from(d - b'0');
            denom *= 10;
        }
        total += whole * scale + frac * scale / denom;
        if total > MAX_NANOS {
            return Err(DurationError::TooLong);
        }
        rest = r;
    }
    if negative || total == 0 {
        return Err(DurationError::NotPositive);
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| DurationError::TooLong)
}

pub(super) fn parse_bool(attr: Attr<'_>) -> Result<bool, AttrError> {
    match attr.value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(attr, "is not a boolean", BOOL_HELP)),
    }
}

pub(super) fn parse_gid(attr: Attr<'_>) -> Result<u32, AttrError> {
    const ACCEPTED: &str = "a decimal group id from 0 to 4294967294";
    // `u32::from_str` would also take "+5"; only plain digits are a gid.
    if !attr.value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(attr, "is not a decimal group id", ACCEPTED));
    }
    match attr.value.parse::<u32>() {
        // chown(2) reads (gid_t)-1 as "leave the group unchanged", so it would silently
        // do nothing.
        Ok(u32::MAX) => Err(invalid(
            attr,
            "is reserved: chown reads it as \"leave the group unchanged\"",
            ACCEPTED,
        )),
        Ok(gid) => Ok(gid),
        Err(_) => Err(invalid(attr, "is out of range", ACCEPTED)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_for_flags() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(
            parse_duration("0s"),
            Err(
                "\"0s\" is not a positive duration; accepted: a Go duration such as \"2160h\", \
                 \"90m\" or \"1h30m\""
                    .to_owned()
            )
        );
    }

    #[test]
    fn go_duration_syntax() {
        let ok = [
            ("1ns", 1),
            ("1us", 1_000),
            ("1μs", 1_000),
            ("+2ms", 2_000_000),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1.000000000000000000000001s", 1_000_000_000),
            ("2562047h", 2_562_047 * 3_600_000_000_000),
        ];
        for (s, nanos) in ok {
            assert_eq!(
                go_duration(s).ok(),
                Some(Duration::from_nanos(nanos)),
                "{s}"
            );
        }
        for s in [
            "", "-", ".", "1.5", "1hm", "1 h", "1e3s", "--1s", "2562048h",
        ] {
            assert!(go_duration(s).is_err(), "{s} should be rejected");
        }
        assert!(matches!(go_duration("-0"), Err(DurationError::NotPositive)));
        assert!(matches!(
            go_duration("2562048h"),
            Err(DurationError::TooLong)
        ));
    }
}
