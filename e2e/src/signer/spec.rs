//! The CertificateRequest spec fields cert-manager interprets: Go durations and usages.

use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};

use super::SignerError;

/// Parses a Go duration string (`time.ParseDuration`): `2160h0m0s`, `1h`, `90m`, `1.5h`, `0`.
/// Negative durations are refused: no certificate can have one.
pub fn parse_go_duration(input: &str) -> Result<Duration, SignerError> {
    let err = |reason| SignerError::Duration {
        input: input.to_string(),
        reason,
    };
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(err("negative durations are not valid here"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    // Nanoseconds, as Go counts them; u128 so overflow is detected rather than wrapped.
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        s = rest;
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(s.len(), |(i, _)| i);
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err("number too large"))?
        };
        let mut value = whole.checked_mul(scale).ok_or(err("overflow"))?;
        // Fractions are exact to the nanosecond, truncated as Go does.
        let mut frac_scale = scale;
        for digit in frac_part.bytes() {
            frac_scale /= 10;
            value += u128::from(digit - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or(err("overflow"))?;
        if total > i64::MAX as u128 {
            return Err(err("overflow"));
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Maps `spec.usages` to key usages and extended key usages as cert-manager's
/// `KeyUsagesForCertificateOrCertificateRequest` does: no usages means digital signature + key
/// encipherment, and `isCA` adds cert sign.
pub fn map_usages(
    usages: &[String],
    is_ca: bool,
) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), SignerError> {
    let mut ku: Vec<KeyUsagePurpose> = Vec::new();
    let mut eku: Vec<ExtendedKeyUsagePurpose> = Vec::new();
    let default = [
        "digital signature".to_string(),
        "key encipherment".to_string(),
    ];
    let usages = if usages.is_empty() {
        &default[..]
    } else {
        usages
    };
    for usage in usages {
        let k = match usage.as_str() {
            "signing" | "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
            "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
            "cert sign" => Some(KeyUsagePurpose::KeyCertSign),
            "crl sign" => Some(KeyUsagePurpose::CrlSign),
            "encipher only" => Some(KeyUsagePurpose::EncipherOnly),
            "decipher only" => Some(KeyUsagePurpose::DecipherOnly),
            _ => None,
        };
        if let Some(k) = k {
            if !ku.contains(&k) {
                ku.push(k);
            }
            continue;
        }
        let e = match usage.as_str() {
            "any" => ExtendedKeyUsagePurpose::Any,
            "server auth" => ExtendedKeyUsagePurpose::ServerAuth,
            "client auth" => ExtendedKeyUsagePurpose::ClientAuth,
            "code signing" => ExtendedKeyUsagePurpose::CodeSigning,
            "email protection" | "s/mime" => ExtendedKeyUsagePurpose::EmailProtection,
            "ipsec end system" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5]),
            "ipsec tunnel" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]),
            "ipsec user" => ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7]),
            "timestamping" => ExtendedKeyUsagePurpose::TimeStamping,
            "ocsp signing" => ExtendedKeyUsagePurpose::OcspSigning,
            "microsoft sgc" => {
                ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3])
            }
            "netscape sgc" => ExtendedKeyUsagePurpose::Other(vec![2, 16, 840, 1, 113730, 4, 1]),
            other => return Err(SignerError::UnknownUsage(other.to_string())),
        };
        if !eku.contains(&e) {
            eku.push(e);
        }
    }
    if is_ca && !ku.contains(&KeyUsagePurpose::KeyCertSign) {
        ku.push(KeyUsagePurpose::KeyCertSign);
    }
    Ok((ku, eku))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_time_parse_duration() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_go_duration("2160h0m0s").unwrap(), h(2160));
        assert_eq!(parse_go_duration("1h").unwrap(), h(1));
        assert_eq!(parse_go_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1h30m15s").unwrap(),
            Duration::from_secs(5415)
        );
        assert_eq!(parse_go_duration("+2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration(".5s").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_go_duration("300ms").unwrap(),
            Duration::from_millis(300)
        );
        assert_eq!(parse_go_duration("7us").unwrap(), Duration::from_micros(7));
        assert_eq!(parse_go_duration("7µs").unwrap(), Duration::from_micros(7));
        assert_eq!(parse_go_duration("9ns").unwrap(), Duration::from_nanos(9));
        for bad in [
            "",
            "1",
            "h",
            "1d",
            "-1h",
            "1h-2m",
            ".h",
            "1.h2",
            "99999999999999999999h",
        ] {
            let result = parse_go_duration(bad);
            // "1.h2" is "1." hours followed by "2" with no unit.
            assert!(result.is_err(), "{bad:?} parsed as {result:?}");
        }
        let msg = parse_go_duration("5x").unwrap_err().to_string();
        assert!(
            msg.contains("\"5x\"") && msg.contains("unknown unit"),
            "{msg}"
        );
    }
    #[test]
    fn usages_default_and_map_as_cert_manager_does() {
        let (ku, eku) = map_usages(&[], false).unwrap();
        assert_eq!(
            ku,
            [
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment
            ]
        );
        assert!(eku.is_empty());

        let (ku, _) = map_usages(&[], true).unwrap();
        assert!(ku.contains(&KeyUsagePurpose::KeyCertSign));

        let us: Vec<String> = [
            "signing",
            "digital signature",
            "server auth",
            "client auth",
            "s/mime",
            "ipsec tunnel",
        ]
        .map(String::from)
        .to_vec();
        let (ku, eku) = map_usages(&us, false).unwrap();
        assert_eq!(ku, [KeyUsagePurpose::DigitalSignature]);
        assert_eq!(
            eku,
            [
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::EmailProtection,
                ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6]),
            ]
        );
        // Only extended usages given: no KeyUsage bits are added besides cert sign for a CA.
        let (ku, _) = map_usages(&["server auth".to_string()], true).unwrap();
        assert_eq!(ku, [KeyUsagePurpose::KeyCertSign]);

        let err = map_usages(&["telepathy".to_string()], false).unwrap_err();
        assert_eq!(err.to_string(), "unknown usage \"telepathy\"");
    }
}
