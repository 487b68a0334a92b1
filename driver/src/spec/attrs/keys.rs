//! The key: `key-algorithm`, `key-size` and `key-encoding` with cert-manager's defaults, and the
//! key usages.

use super::context::{Attr, Attrs, invalid, invalid_entry};
use super::values::split_list;
use super::{AttrError, CERTVOL_PREFIX};
use crate::spec::request::{KeyAlgorithm, KeyEncoding, KeyUsage};

pub(super) fn parse_usages(
    attr: Option<Attr<'_>>,
    is_ca: bool,
) -> Result<Vec<KeyUsage>, AttrError> {
    let mut usages = match attr {
        None => vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        Some(a) => {
            let accepted = || {
                KeyUsage::ALL
                    .iter()
                    .map(|(_, n)| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + ", separated by commas"
            };
            let names = split_list(a.value);
            if names.is_empty() {
                return Err(invalid(a, "lists no key usage", accepted()));
            }
            let mut usages = Vec::with_capacity(names.len() + 1);
            for name in &names {
                let usage = KeyUsage::from_name(name)
                    .ok_or_else(|| invalid_entry(a, name, "is not a key usage", &accepted()))?;
                usages.push(usage);
            }
            usages
        }
    };
    if is_ca {
        usages.push(KeyUsage::CertSign);
    }
    usages.sort();
    usages.dedup();
    Ok(usages)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ecdsa,
    Ed25519,
}

/// `key-algorithm`, `key-size` and `key-encoding`, defaulted as the module docs of `attrs`
/// describe.
pub(super) fn parse_key(
    attrs: &Attrs<'_>,
    home: &str,
) -> Result<(KeyAlgorithm, KeyEncoding), AttrError> {
    let family = parse_family(attrs, home)?;
    let algorithm = parse_size(attrs, family, home)?;
    let encoding = parse_encoding(attrs, family)?;
    Ok((algorithm, encoding))
}

fn parse_family(attrs: &Attrs<'_>, home: &str) -> Result<Family, AttrError> {
    Ok(match attrs.get("key-algorithm") {
        Some(a) => {
            if a.value.eq_ignore_ascii_case("rsa") {
                Family::Rsa
            } else if a.value.eq_ignore_ascii_case("ecdsa") {
                Family::Ecdsa
            } else if a.value.eq_ignore_ascii_case("ed25519") {
                Family::Ed25519
            } else {
                return Err(invalid(
                    a,
                    "is not a key algorithm",
                    "\"RSA\", \"ECDSA\" or \"Ed25519\" (any case)",
                ));
            }
        }
        None if home == CERTVOL_PREFIX => Family::Ecdsa,
        None => Family::Rsa,
    })
}

/// The algorithm with its size: `key-size` within `family`, or the family's default.
fn parse_size(attrs: &Attrs<'_>, family: Family, home: &str) -> Result<KeyAlgorithm, AttrError> {
    let Some(size) = attrs.get("key-size") else {
        return Ok(match family {
            Family::Rsa => KeyAlgorithm::Rsa2048,
            Family::Ecdsa => KeyAlgorithm::EcdsaP256,
            Family::Ed25519 => KeyAlgorithm::Ed25519,
        });
    };
    match (family, size.value) {
        (Family::Rsa, "2048") => return Ok(KeyAlgorithm::Rsa2048),
        (Family::Rsa, "3072") => return Ok(KeyAlgorithm::Rsa3072),
        (Family::Rsa, "4096") => return Ok(KeyAlgorithm::Rsa4096),
        (Family::Ecdsa, "256") => return Ok(KeyAlgorithm::EcdsaP256),
        (Family::Ecdsa, "384") => return Ok(KeyAlgorithm::EcdsaP384),
        _ => {}
    }
    let (problem, accepted) = match family {
        Family::Rsa => (
            "is not a supported RSA key size",
            "2048 (default), 3072 or 4096",
        ),
        // cert-manager accepts P-521; say it is a gap, not a typo.
        Family::Ecdsa if size.value == "521" => (
            "is not supported yet: certvol has no P-521 keys",
            "256 (default) or 384",
        ),
        Family::Ecdsa => ("is not a supported ECDSA key size", "256 (default) or 384"),
        Family::Ed25519 => (
            "is not allowed: Ed25519 keys have a fixed size",
            "no key-size with Ed25519",
        ),
    };
    // Explains a surprising size error when the user never chose the algorithm.
    let defaulted = if attrs.get("key-algorithm").is_none() {
        let name = if family == Family::Rsa {
            "RSA"
        } else {
            "ECDSA"
        };
        format!(
            " (key-algorithm defaults to {name} for volumes whose issuer-name is under \
             \"{home}\"; set it to pick another algorithm)"
        )
    } else {
        String::new()
    };
    Err(invalid(size, problem, format!("{accepted}{defaulted}")))
}

fn parse_encoding(attrs: &Attrs<'_>, family: Family) -> Result<KeyEncoding, AttrError> {
    Ok(match attrs.get("key-encoding") {
        None if family == Family::Rsa => KeyEncoding::Pkcs1,
        None => KeyEncoding::Pkcs8,
        Some(a) if a.value.eq_ignore_ascii_case("pkcs1") => {
            if family == Family::Ed25519 {
                return Err(invalid(
                    a,
                    "cannot be used with Ed25519 keys, which have no PKCS#1 form",
                    "\"PKCS8\" with Ed25519",
                ));
            }
            KeyEncoding::Pkcs1
        }
        Some(a) if a.value.eq_ignore_ascii_case("pkcs8") => KeyEncoding::Pkcs8,
        Some(a) => {
            return Err(invalid(
                a,
                "is not a key encoding",
                "\"PKCS1\" or \"PKCS8\" (any case)",
            ));
        }
    })
}
