//! `literal-subject`: an RFC 4514 distinguished name, parsed once at the edge into its attribute
//! types and values, so a subject that cannot be encoded is refused with the volume's other
//! attribute errors instead of after the volume's tmpfs is mounted and its key generated.
//!
//! The accepted language is cert-manager's: attribute types from [`ATTRIBUTE_TYPES`] (any case)
//! or dotted OIDs, values as escaped text (the `#hex` form is not supported).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Attribute types accepted in a literal subject: cert-manager's table plus `POSTALCODE`.
const ATTRIBUTE_TYPES: [(&str, &[u64]); 11] = [
    ("CN", &[2, 5, 4, 3]),
    ("SERIALNUMBER", &[2, 5, 4, 5]),
    ("C", &[2, 5, 4, 6]),
    ("L", &[2, 5, 4, 7]),
    ("ST", &[2, 5, 4, 8]),
    ("STREET", &[2, 5, 4, 9]),
    ("O", &[2, 5, 4, 10]),
    ("OU", &[2, 5, 4, 11]),
    ("POSTALCODE", &[2, 5, 4, 17]),
    ("UID", &[0, 9, 2342, 19200300, 100, 1, 1]),
    ("DC", &[0, 9, 2342, 19200300, 100, 1, 25]),
];

/// What a literal subject may hold, for messages.
pub(crate) const ACCEPTED: &str = "an RFC 4514 distinguished name such as \"CN=app,O=Example,C=GB\" \
                            whose attribute types are CN, SERIALNUMBER, C, L, ST, STREET, O, OU, \
                            POSTALCODE, UID, DC or a dotted OID, with values as text (no #hex \
                            form)";

/// One `TYPE=VALUE` of a relative distinguished name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeValue {
    /// The attribute type's OID arcs.
    pub oid: Vec<u64>,
    /// The value with its escapes resolved.
    pub value: String,
}

/// A parsed `literal-subject`: its relative distinguished names in the order written (most
/// specific first), each one or more attribute values joined by `+`. Serialized as the text it
/// was parsed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LiteralSubject {
    text: String,
    rdns: Vec<Vec<AttributeValue>>,
}

/// Why a text is not a literal subject certvol can encode. Messages read after the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LiteralSubjectError {
    #[error("is empty")]
    Empty,
    #[error("ends with a lone backslash")]
    LoneBackslash,
    #[error("has a component without \"type=value\": {0:?} is not TYPE=VALUE")]
    NotTypeValue(String),
    #[error("has an attribute type {0:?} that is neither a keyword (CN, O, ...) nor an OID")]
    TypeSyntax(String),
    #[error("has an unknown attribute type {0:?}")]
    UnknownType(String),
    #[error("uses the #hex value form for {0}, which is not supported; write the value as text")]
    HexValue(String),
    #[error("has a character {0:?} that must be escaped with a backslash")]
    Unescaped(char),
    #[error("has escaped bytes that are not valid UTF-8")]
    InvalidUtf8,
}

impl LiteralSubject {
    /// Parses an RFC 4514 string such as `CN=web,O=Acme\, Inc.`.
    pub fn parse(text: &str) -> Result<Self, LiteralSubjectError> {
        if text.trim().is_empty() {
            return Err(LiteralSubjectError::Empty);
        }
        check_syntax(text)?;
        let mut rdns = Vec::new();
        for rdn in split_unescaped(text, ',') {
            let atvs = split_unescaped(rdn, '+')
                .into_iter()
                .map(parse_attribute)
                .collect::<Result<_, _>>()?;
            rdns.push(atvs);
        }
        Ok(LiteralSubject {
            text: text.to_owned(),
            rdns,
        })
    }

    /// The text as written (after variable expansion).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The relative distinguished names, most specific first, as written.
    pub fn rdns(&self) -> &[Vec<AttributeValue>] {
        &self.rdns
    }
}

impl fmt::Display for LiteralSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for LiteralSubject {
    type Error = LiteralSubjectError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        LiteralSubject::parse(&text)
    }
}

impl From<LiteralSubject> for String {
    fn from(subject: LiteralSubject) -> String {
        subject.text
    }
}

/// Short name of an attribute type OID, for printing names (RFC 4514).
pub(crate) fn attribute_type_name(arcs: &[u64]) -> Option<&'static str> {
    ATTRIBUTE_TYPES
        .iter()
        .find(|(_, o)| *o == arcs)
        .map(|(n, _)| *n)
}

/// The shape of the whole string: `type=value` pairs separated by unescaped `,` (RDNs) or `+`
/// (multi-valued RDNs), types being keywords or dotted OIDs.
fn check_syntax(dn: &str) -> Result<(), LiteralSubjectError> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut chars = dn.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return Err(LiteralSubjectError::LoneBackslash),
            // The escaped character was consumed by the guard above.
            '\\' => {}
            ',' | '+' => {
                parts.push(&dn[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&dn[start..]);
    for part in parts {
        let Some((ty, _value)) = part.split_once('=') else {
            return Err(LiteralSubjectError::NotTypeValue(part.trim().to_owned()));
        };
        let ty = ty.trim();
        let keyword = ty.starts_with(|c: char| c.is_ascii_alphabetic())
            && ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let oid = ty.contains('.')
            && ty
                .split('.')
                .all(|arc| !arc.is_empty() && arc.chars().all(|c| c.is_ascii_digit()));
        if !keyword && !oid {
            return Err(LiteralSubjectError::TypeSyntax(ty.to_owned()));
        }
    }
    Ok(())
}

/// One `TYPE=VALUE`: a known type or a valid OID, and a text value.
fn parse_attribute(part: &str) -> Result<AttributeValue, LiteralSubjectError> {
    let Some((ty, raw_value)) = split_first_unescaped(part, '=') else {
        return Err(LiteralSubjectError::NotTypeValue(part.trim().to_owned()));
    };
    let ty = ty.trim();
    let oid =
        parse_attribute_type(ty).ok_or_else(|| LiteralSubjectError::UnknownType(ty.into()))?;
    let raw_value = raw_value.trim_start();
    if raw_value.starts_with('#') {
        return Err(LiteralSubjectError::HexValue(ty.to_owned()));
    }
    let value = unescape_value(raw_value)?;
    Ok(AttributeValue { oid, value })
}

fn parse_attribute_type(ty: &str) -> Option<Vec<u64>> {
    if let Some((_, oid)) = ATTRIBUTE_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(ty))
    {
        return Some(oid.to_vec());
    }
    let arcs: Vec<u64> = ty
        .split('.')
        .map(|a| {
            if a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                a.parse().ok()
            }
        })
        .collect::<Option<_>>()?;
    let valid = match arcs.as_slice() {
        [first @ 0..=1, second, ..] => *first <= 1 && *second < 40,
        [2, _, ..] => true,
        _ => false,
    };
    valid.then_some(arcs)
}

/// Splits on `sep` where it is not escaped by a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

fn split_first_unescaped(s: &str, sep: char) -> Option<(&str, &str)> {
    let first = split_unescaped(s, sep).into_iter().next()?;
    if first.len() == s.len() {
        return None;
    }
    Some((first, &s[first.len() + sep.len_utf8()..]))
}

/// Resolves `\c` and `\XX` escapes. Unescaped trailing spaces are dropped (RFC 4514 requires a
/// significant trailing space to be escaped).
fn unescape_value(raw: &str) -> Result<String, LiteralSubjectError> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut significant_len = 0;
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
            } else if let Some(&next) = bytes.get(i + 1) {
                // Escaped character: copy it (and the rest of a multi-byte UTF-8 sequence as is).
                out.push(next);
                i += 2;
            } else {
                return Err(LiteralSubjectError::LoneBackslash);
            }
            significant_len = out.len();
        } else {
            out.push(b);
            i += 1;
            if b != b' ' {
                significant_len = out.len();
            }
        }
        if b == b'"' || b == b'<' || b == b'>' || b == b';' {
            return Err(LiteralSubjectError::Unescaped(b as char));
        }
    }
    out.truncate(significant_len);
    String::from_utf8(out).map_err(|_| LiteralSubjectError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_subject_errors_are_clear() {
        for (literal, needle) in [
            ("", "empty"),
            ("CN", "TYPE=VALUE"),
            ("FOO=bar", "unknown attribute type"),
            ("CN=#0403616263", "#hex"),
            ("CN=a\\", "lone backslash"),
            ("CN=a;b", "escaped"),
        ] {
            let err = LiteralSubject::parse(literal).unwrap_err().to_string();
            assert!(err.contains(needle), "{literal:?}: {err}");
        }
        // Dotted OIDs and hex escapes are accepted.
        let parsed = LiteralSubject::parse("1.2.3.4=x\\41,cn=y ").unwrap();
        let values: Vec<_> = parsed.rdns().iter().flatten().map(|a| &a.value).collect();
        assert_eq!(values, ["xA", "y"]);
        assert_eq!(parsed.rdns()[1][0].oid, [2, 5, 4, 3]);
    }

    #[test]
    fn escapes_and_multi_valued_rdns_are_kept_in_order() {
        let parsed =
            LiteralSubject::parse("CN=web\\, primary,OU=Platform+OU=Infra,O=Acme").unwrap();
        let rdns: Vec<Vec<&str>> = parsed
            .rdns()
            .iter()
            .map(|rdn| rdn.iter().map(|a| a.value.as_str()).collect())
            .collect();
        assert_eq!(
            rdns,
            [
                vec!["web, primary"],
                vec!["Platform", "Infra"],
                vec!["Acme"]
            ]
        );
        assert_eq!(
            parsed.as_str(),
            "CN=web\\, primary,OU=Platform+OU=Infra,O=Acme"
        );
    }

    #[test]
    fn serializes_as_its_text_and_refuses_bad_text_when_read_back() {
        let parsed = LiteralSubject::parse("CN=a,O=b").unwrap();
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, "\"CN=a,O=b\"");
        let back: LiteralSubject = serde_json::from_str(&json).unwrap();
        assert_eq!(back, parsed);
        let err = serde_json::from_str::<LiteralSubject>("\"FOO=bar\"").unwrap_err();
        assert!(err.to_string().contains("unknown attribute type"), "{err}");
    }

    #[test]
    fn every_named_type_has_a_name_for_its_oid() {
        for (name, oid) in ATTRIBUTE_TYPES {
            assert_eq!(attribute_type_name(oid), Some(name));
            assert!(ACCEPTED.contains(name), "{name}");
        }
    }
}
