//! File names inside the volume (`*-file`, `pkcs12-*`), the PKCS#12 settings and the keystore
//! password.

use std::collections::HashMap;

use super::context::{Attr, Attrs, invalid};
use super::values::parse_bool;
use super::{
    AttrError, CERT_MANAGER_PREFIX, CERTVOL_PREFIX, DEFAULT_PKCS12_FILE,
    DEFAULT_PKCS12_PASSWORD_KEY,
};
use crate::spec::request::{FileNames, Password, PasswordSource, Pkcs12Files, Pkcs12Profile};

/// The password of the volume's PKCS#12 files: the nodePublishSecretRef Secret's key when
/// kubelet sent it (the Secret wins over a literal), else the literal `pkcs12-password`
/// attribute (cert-manager parity). A key named explicitly by `pkcs12-password-key` must be in
/// the Secret.
pub fn pkcs12_password(
    source: &PasswordSource,
    ctx: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
) -> Result<Password, AttrError> {
    match secrets.get(&source.secret_key) {
        Some(value) if !value.is_empty() => return Ok(Password::new(value.clone())),
        _ => {}
    }
    let literal = source
        .literal_attribute
        .as_ref()
        .and_then(|k| ctx.get(k))
        .filter(|v| !v.is_empty());
    if let (Some(literal), None) = (literal, &source.secret_key_attribute) {
        return Ok(Password::new(literal.clone()));
    }
    let found = match secrets.get(&source.secret_key) {
        Some(_) => "its value is empty".to_owned(),
        None if secrets.is_empty() => "kubelet sent no Secret (set nodePublishSecretRef on the \
                                       pod's csi volume)"
            .to_owned(),
        // The Secret's other key names are not listed: kubelet reads it with the node's
        // credentials, and the message reaches whoever can see the pod's events, who may not
        // be allowed to read the Secret.
        None => "the Secret has no such key".to_owned(),
    };
    Err(AttrError::MissingSecretKey {
        attribute: source
            .secret_key_attribute
            .clone()
            .unwrap_or_else(|| format!("{CERTVOL_PREFIX}pkcs12-password-key")),
        key: source.secret_key.clone(),
        found,
    })
}

const FILE_NAME_HELP: &str = "a plain file name such as \"tls.crt\": no '/', not starting \
                              with \"..\", no leading or trailing spaces, at most 255 bytes";

/// One file name of the volume: the attribute that chose it (as written, or as it would be
/// written for a default) and whether the user wrote it.
struct Chosen {
    attribute: String,
    name: String,
    explicit: bool,
}

fn file_attr(attr: Attr<'_>) -> Result<Chosen, AttrError> {
    check_file_name(attr.value).map_err(|problem| invalid(attr, problem, FILE_NAME_HELP))?;
    Ok(Chosen {
        attribute: attr.key.to_owned(),
        name: attr.value.to_owned(),
        explicit: true,
    })
}

fn prefix_of(attr: Attr<'_>) -> &'static str {
    if attr.key.starts_with(CERT_MANAGER_PREFIX) {
        CERT_MANAGER_PREFIX
    } else {
        CERTVOL_PREFIX
    }
}

pub(super) fn parse_files(attrs: &Attrs<'_>, home: &str) -> Result<FileNames, AttrError> {
    let defaults = FileNames::default();
    let mut chosen: Vec<Chosen> = Vec::new();
    let mut pem = |name: &str, default: String| -> Result<String, AttrError> {
        let c = match attrs.get(name) {
            Some(a) => file_attr(a)?,
            None => Chosen {
                attribute: format!("{home}{name}"),
                name: default,
                explicit: false,
            },
        };
        let name = c.name.clone();
        chosen.push(c);
        Ok(name)
    };
    let ca = pem("ca-file", defaults.ca)?;
    let certificate = pem("certificate-file", defaults.certificate)?;
    let private_key = pem("privatekey-file", defaults.private_key)?;

    let optional = |name: &str, chosen: &mut Vec<Chosen>| -> Result<Option<String>, AttrError> {
        let Some(a) = attrs.get(name) else {
            return Ok(None);
        };
        let c = file_attr(a)?;
        let name = c.name.clone();
        chosen.push(c);
        Ok(Some(name))
    };
    let key_chain = optional("key-chain-file", &mut chosen)?;
    let chain = optional("chain-file", &mut chosen)?;
    let pkcs12 = parse_pkcs12(attrs, &mut chosen)?;
    check_distinct(&chosen)?;
    Ok(FileNames {
        ca,
        certificate,
        private_key,
        key_chain,
        chain,
        trust_bundle: None,
        pkcs12,
    })
}

/// The PKCS#12 keystore (`pkcs12-enable`, `pkcs12-filename`) and truststore
/// (`truststore-pkcs12-file`), with their shared profile and password source.
fn parse_pkcs12(
    attrs: &Attrs<'_>,
    chosen: &mut Vec<Chosen>,
) -> Result<Option<Pkcs12Files>, AttrError> {
    let keystore = parse_keystore(attrs)?;
    let truststore = attrs
        .get("truststore-pkcs12-file")
        .map(file_attr)
        .transpose()?;
    let keystore_name = keystore.as_ref().map(|c| c.name.clone());
    let truststore_name = truststore.as_ref().map(|c| c.name.clone());
    chosen.extend(keystore);
    chosen.extend(truststore);

    let settings = ["pkcs12-profile", "pkcs12-password-key", "pkcs12-password"];
    if keystore_name.is_none() && truststore_name.is_none() {
        if let Some(a) = settings.iter().find_map(|k| attrs.get(k)) {
            return Err(AttrError::Requires {
                attribute: a.key.to_owned(),
                requires: format!(
                    "a PKCS#12 file (\"{}pkcs12-enable\" set to \"true\", or \
                     \"{CERTVOL_PREFIX}truststore-pkcs12-file\")",
                    prefix_of(a)
                ),
            });
        }
        return Ok(None);
    }
    Ok(Some(Pkcs12Files {
        keystore: keystore_name,
        truststore: truststore_name,
        profile: parse_profile(attrs)?,
        password: parse_password_source(attrs)?,
    }))
}

/// The keystore's name when `pkcs12-enable` is "true"; a name without it is refused.
fn parse_keystore(attrs: &Attrs<'_>) -> Result<Option<Chosen>, AttrError> {
    let enable = attrs.get("pkcs12-enable");
    let enabled = enable.map(parse_bool).transpose()?.unwrap_or(false);
    Ok(match (enabled, attrs.get("pkcs12-filename")) {
        (true, Some(a)) => Some(file_attr(a)?),
        (true, None) => Some(Chosen {
            attribute: format!(
                "{}pkcs12-filename",
                enable.map_or(CERT_MANAGER_PREFIX, prefix_of)
            ),
            name: DEFAULT_PKCS12_FILE.to_owned(),
            explicit: false,
        }),
        (false, Some(a)) => {
            return Err(AttrError::Requires {
                attribute: a.key.to_owned(),
                requires: format!("\"{}pkcs12-enable\" set to \"true\"", prefix_of(a)),
            });
        }
        (false, None) => None,
    })
}

fn parse_profile(attrs: &Attrs<'_>) -> Result<Pkcs12Profile, AttrError> {
    Ok(match attrs.get("pkcs12-profile") {
        None => Pkcs12Profile::default(),
        Some(a) => match a.value {
            "modern" => Pkcs12Profile::Modern,
            "legacy" => Pkcs12Profile::Legacy,
            _ => {
                return Err(invalid(
                    a,
                    "is not a PKCS#12 profile",
                    "\"modern\" (AES-256-CBC, PBKDF2-HMAC-SHA256, SHA-256 MAC; the default) or \
                     \"legacy\" (3DES, SHA-1 MAC; for Java before 8u301)",
                ));
            }
        },
    })
}

/// Where the password comes from: `pkcs12-password-key` of the Secret (or its default key),
/// and a literal `pkcs12-password` attribute's key, never its value.
fn parse_password_source(attrs: &Attrs<'_>) -> Result<PasswordSource, AttrError> {
    let secret_key = attrs.get("pkcs12-password-key");
    if let Some(a) = secret_key {
        check_secret_key(a.value).map_err(|problem| {
            invalid(
                a,
                problem,
                "a Secret data key: letters, digits, '-', '_' and '.', at most 253 characters",
            )
        })?;
    }
    Ok(PasswordSource {
        secret_key: secret_key
            .map_or(DEFAULT_PKCS12_PASSWORD_KEY, |a| a.value)
            .to_owned(),
        secret_key_attribute: secret_key.map(|a| a.key.to_owned()),
        literal_attribute: attrs.get("pkcs12-password").map(|a| a.key.to_owned()),
    })
}

/// Kubernetes' rule for ConfigMap and Secret data keys.
fn check_secret_key(key: &str) -> Result<(), &'static str> {
    if key.len() > 253 {
        return Err("is longer than 253 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("contains a character other than letters, digits, '-', '_' and '.'");
    }
    if key == "." || key == ".." {
        return Err("is \".\" or \"..\"");
    }
    Ok(())
}

/// Every file name of the volume must be distinct; blames an attribute the user wrote (at least
/// one of two equal names is explicit, since the defaults differ).
fn check_distinct(chosen: &[Chosen]) -> Result<(), AttrError> {
    for (i, first) in chosen.iter().enumerate() {
        for second in &chosen[i + 1..] {
            if first.name != second.name {
                continue;
            }
            let (blamed, other) = if second.explicit {
                (second, first)
            } else {
                (first, second)
            };
            let other = if other.explicit {
                format!("{:?}", other.attribute)
            } else {
                format!("{:?} (its default)", other.attribute)
            };
            return Err(AttrError::DuplicateFileName {
                attribute: blamed.attribute.clone(),
                name: blamed.name.clone(),
                other,
            });
        }
    }
    Ok(())
}

pub(super) fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 255 {
        return Err("is longer than 255 bytes");
    }
    if name.contains('/') {
        return Err("contains '/'");
    }
    if name.contains('\0') {
        return Err("contains a NUL character");
    }
    if name == "." {
        return Err("is \".\"");
    }
    // Also covers ".."; names starting with ".." are reserved for the `..data` swap layout.
    if name.starts_with("..") {
        return Err("starts with \"..\" (reserved for the volume's internal layout)");
    }
    if name.trim() != name {
        return Err("has leading or trailing spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::super::tests::with;
    use super::*;

    #[test]
    fn pkcs12_password_comes_from_the_secret_first_then_the_literal() {
        let secrets = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let source = |extra: &[(&str, &str)]| {
            let mut extra = extra.to_vec();
            extra.push(("csi.cert-manager.io/pkcs12-enable", "true"));
            let c = with(&extra);
            let req = parse(&c).unwrap();
            (req.files.pkcs12.unwrap().password, c)
        };

        // The default key of the Secret.
        let (src, c) = source(&[]);
        let pw = pkcs12_password(&src, &c, &secrets(&[("pkcs12-password", "from-secret")]));
        assert_eq!(pw.unwrap().expose(), "from-secret");

        // The Secret wins over a literal.
        let (src, c) = source(&[("csi.cert-manager.io/pkcs12-password", "literal")]);
        let pw = pkcs12_password(&src, &c, &secrets(&[("pkcs12-password", "from-secret")]));
        assert_eq!(pw.unwrap().expose(), "from-secret");
        // ...and the literal is used without one; ours wins over cert-manager's.
        let pw = pkcs12_password(&src, &c, &HashMap::new());
        assert_eq!(pw.unwrap().expose(), "literal");
        let (src, c) = source(&[
            ("csi.cert-manager.io/pkcs12-password", "theirs"),
            ("csi.certvol.io/pkcs12-password", "ours"),
        ]);
        assert_eq!(
            pkcs12_password(&src, &c, &HashMap::new()).unwrap().expose(),
            "ours"
        );

        // A named key must be in the Secret, even with a literal present.
        let (src, c) = source(&[
            ("csi.certvol.io/pkcs12-password-key", "ks-pass"),
            ("csi.cert-manager.io/pkcs12-password", "literal"),
        ]);
        let err = pkcs12_password(
            &src,
            &c,
            &secrets(&[("other", "x"), ("pkcs12-password", "y")]),
        )
        .unwrap_err();
        assert_eq!(err.attribute(), "csi.certvol.io/pkcs12-password-key");
        let msg = err.to_string();
        assert!(
            msg.contains("read from key \"ks-pass\"")
                && msg.contains("the Secret has no such key")
                && !msg.contains("other"),
            "{msg}"
        );
        assert_eq!(
            pkcs12_password(&src, &c, &secrets(&[("ks-pass", "named")]))
                .unwrap()
                .expose(),
            "named"
        );

        // Nothing at all: the message says kubelet sent no Secret, naming the default key.
        let (src, c) = source(&[]);
        let err = pkcs12_password(&src, &c, &HashMap::new()).unwrap_err();
        assert_eq!(err.attribute(), "csi.certvol.io/pkcs12-password-key");
        let msg = err.to_string();
        assert!(
            msg.contains("key \"pkcs12-password\"") && msg.contains("kubelet sent no Secret"),
            "{msg}"
        );
        // An empty value is no password.
        let err = pkcs12_password(&src, &c, &secrets(&[("pkcs12-password", "")])).unwrap_err();
        assert!(err.to_string().contains("its value is empty"), "{err}");
        assert!(!format!("{:?}", Password::new("hunter2")).contains("hunter2"));
    }
}
