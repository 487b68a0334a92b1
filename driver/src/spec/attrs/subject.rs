//! The certificate's names: the subject (fields or `literal-subject`) and the subject
//! alternative names.

use std::net::IpAddr;

use super::context::{Attr, Attrs, invalid_entry};
use super::values::{expand, split_list};
use super::{AttrError, MAX_SANS};
use crate::spec::request::{PodInfo, Sans, Subject};
use crate::spec::subject::{self as literal_subject, LiteralSubject};

/// The subject and SANs; a certificate without any of them identifies nothing.
pub(super) fn parse_names(
    attrs: &Attrs<'_>,
    home: &'static str,
) -> Result<(Subject, Sans), AttrError> {
    let pod = &attrs.pod;
    let subject = parse_subject(attrs, pod)?;
    let sans = parse_sans(attrs, pod)?;
    if subject.common_name.is_none() && subject.literal.is_none() && sans.is_empty() {
        return Err(AttrError::NothingRequested {
            attribute: format!("{home}common-name"),
            prefix: home,
        });
    }
    Ok((subject, sans))
}

/// Subject fields that `literal-subject` replaces.
const SUBJECT_FIELDS: [&str; 8] = [
    "common-name",
    "organizations",
    "organizationalunits",
    "countries",
    "provinces",
    "localities",
    "streetaddresses",
    "postalcodes",
];

fn parse_subject(attrs: &Attrs<'_>, pod: &PodInfo) -> Result<Subject, AttrError> {
    if let Some(literal) = attrs.get("literal-subject") {
        let conflicting = SUBJECT_FIELDS
            .iter()
            .chain(std::iter::once(&"serialnumber"))
            .find_map(|f| attrs.get(f));
        if let Some(other) = conflicting {
            return Err(AttrError::Conflict {
                attribute: literal.key.to_owned(),
                other: other.key.to_owned(),
                why: "literal-subject gives the whole subject, so the individual subject fields \
                      must be unset (common names go in the literal as CN=...)",
            });
        }
        let expanded = expand(literal, pod)?;
        let parsed = LiteralSubject::parse(&expanded).map_err(|problem| AttrError::Invalid {
            attribute: literal.key.to_owned(),
            value: expanded.clone(),
            problem: problem.to_string(),
            accepted: literal_subject::ACCEPTED.to_owned(),
        })?;
        return Ok(Subject {
            literal: Some(parsed),
            ..Subject::default()
        });
    }

    let single = |name: &str| -> Result<Option<String>, AttrError> {
        match attrs.get(name) {
            None => Ok(None),
            Some(a) => Ok(Some(expand(a, pod)?).filter(|s| !s.trim().is_empty())),
        }
    };
    let list = |name: &str| -> Result<Vec<String>, AttrError> {
        match attrs.get(name) {
            None => Ok(Vec::new()),
            Some(a) => Ok(split_list(&expand(a, pod)?)),
        }
    };
    Ok(Subject {
        common_name: single("common-name")?,
        organizations: list("organizations")?,
        organizational_units: list("organizationalunits")?,
        countries: list("countries")?,
        provinces: list("provinces")?,
        localities: list("localities")?,
        street_addresses: list("streetaddresses")?,
        postal_codes: list("postalcodes")?,
        serial_number: single("serialnumber")?,
        literal: None,
    })
}

/// Refuses `a` once the certificate would carry more than [`MAX_SANS`] names.
fn check_san_count(a: Attr<'_>, sans: &Sans) -> Result<(), AttrError> {
    let n = sans.dns_names.len() + sans.ip_addresses.len() + sans.uris.len();
    if n < MAX_SANS {
        return Ok(());
    }
    Err(AttrError::TooLarge {
        attribute: a.key.to_owned(),
        what: "the number of subject alternative names (dns-names, ip-sans and uri-sans together)",
        got: format!("more than {n}"),
        max: MAX_SANS.to_string(),
    })
}

fn parse_sans(attrs: &Attrs<'_>, pod: &PodInfo) -> Result<Sans, AttrError> {
    let mut sans = Sans::default();
    if let Some(a) = attrs.get("dns-names") {
        for name in split_list(&expand(a, pod)?) {
            if let Err(problem) = check_dns_name(&name) {
                return Err(invalid_entry(
                    a,
                    &name,
                    problem,
                    "DNS names made of letters, digits and '-' in dot-separated labels of at \
                     most 63 characters, optionally starting with \"*.\", at most 253 \
                     characters in all, separated by commas",
                ));
            }
            check_san_count(a, &sans)?;
            sans.dns_names.push(name);
        }
    }
    if let Some(a) = attrs.get("ip-sans") {
        for entry in split_list(a.value) {
            let ip = entry.parse::<IpAddr>().map_err(|_| {
                invalid_entry(
                    a,
                    &entry,
                    "is not an IP address",
                    "IPv4 or IPv6 addresses such as \"10.0.0.1\" or \"fd00::1\", separated by \
                     commas",
                )
            })?;
            check_san_count(a, &sans)?;
            sans.ip_addresses.push(ip);
        }
    }
    if let Some(a) = attrs.get("uri-sans") {
        for uri in split_list(&expand(a, pod)?) {
            if let Err(problem) = check_uri(&uri) {
                return Err(invalid_entry(
                    a,
                    &uri,
                    problem,
                    "absolute URIs with a scheme such as \"spiffe://cluster.local/ns/default/sa/app\", \
                     separated by commas",
                ));
            }
            check_san_count(a, &sans)?;
            sans.uris.push(uri);
        }
    }
    Ok(sans)
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("is longer than 253 characters");
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() {
            return Err("has an empty label (a leading, trailing or doubled '.')");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 characters");
        }
        if label.contains('*') {
            return Err("has a '*' that is not a whole leftmost \"*.\" label");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err("contains a character other than letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'");
        }
    }
    Ok(())
}

fn check_uri(uri: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err("has no scheme");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("has no valid scheme");
    }
    if rest.is_empty() {
        return Err("has nothing after the scheme");
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::with;
    use super::super::{AttrError, parse};

    /// A subject the encoder cannot write is refused here, with the other attribute errors,
    /// naming the attribute, the value and every accepted type.
    #[test]
    fn an_unknown_literal_subject_type_is_refused_naming_the_accepted_ones() {
        let err = parse(&with(&[
            ("csi.cert-manager.io/common-name", ""),
            ("csi.cert-manager.io/literal-subject", "FOO=bar"),
        ]))
        .unwrap_err();
        assert_eq!(err.attribute(), "csi.cert-manager.io/literal-subject");
        let AttrError::Invalid {
            value,
            problem,
            accepted,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(value, "FOO=bar");
        assert!(
            problem.contains("unknown attribute type \"FOO\""),
            "{problem}"
        );
        let types = ["CN", "SERIALNUMBER", "C", "L", "ST", "STREET", "O", "OU"];
        for ty in types
            .iter()
            .chain(&["POSTALCODE", "UID", "DC", "dotted OID"])
        {
            assert!(accepted.contains(ty), "{ty} missing from {accepted}");
        }
        let msg = err.to_string();
        assert!(
            msg.contains("\"csi.cert-manager.io/literal-subject\"") && msg.contains("POSTALCODE"),
            "{msg}"
        );
    }
}
