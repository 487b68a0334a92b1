//! A minimal DER writer, enough for names, CSRs and certificates, and the object identifiers
//! the encoders here and in the local CA use.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;
pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const PRINTABLE_STRING: u8 = 0x13;
pub(crate) const IA5_STRING: u8 = 0x16;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;

pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (be.len() - skip) as u8);
        out.extend_from_slice(&be[skip..]);
    }
    out.extend_from_slice(content);
    out
}

pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &parts.concat())
}

/// DER sorts SET OF elements by their encoding.
pub(crate) fn set_of(mut items: Vec<Vec<u8>>) -> Vec<u8> {
    items.sort();
    tlv(SET, &items.concat())
}

pub(crate) fn oid(arcs: &[u64]) -> Vec<u8> {
    let (first, rest) = match arcs {
        [a, b, rest @ ..] => (a * 40 + b, rest),
        [a] => (a * 40, &[][..]),
        [] => (0, &[][..]),
    };
    let mut body = Vec::new();
    for arc in std::iter::once(first).chain(rest.iter().copied()) {
        let mut chunk = vec![(arc & 0x7f) as u8];
        let mut v = arc >> 7;
        while v > 0 {
            chunk.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        chunk.reverse();
        body.extend_from_slice(&chunk);
    }
    tlv(OID, &body)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn uint(bytes: &[u8]) -> Vec<u8> {
    let skip = bytes
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(bytes.len().saturating_sub(1));
    let bytes = &bytes[skip..];
    let mut content = Vec::with_capacity(bytes.len() + 1);
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(bytes);
    tlv(INTEGER, &content)
}

/// BIT STRING with no unused bits (signatures, keys).
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(BIT_STRING, &content)
}

/// Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
pub(crate) fn extension(oid_arcs: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    let id = oid(oid_arcs);
    let value = tlv(OCTET_STRING, value);
    if critical {
        seq(&[&id, &tlv(BOOLEAN, &[0xff]), &value])
    } else {
        seq(&[&id, &value])
    }
}

/// X.509 Time: UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5). Sub-second
/// parts are dropped.
pub(crate) fn time(t: SystemTime) -> Result<Vec<u8>, String> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_err(|_| "time too far in the future")?,
        Err(e) => -i64::try_from(e.duration().as_secs()).map_err(|_| "time too far back")?,
    };
    let dt = time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| format!("time out of range: {e}"))?;
    let year = dt.year();
    let rest = format!(
        "{:02}{:02}{:02}{:02}{:02}Z",
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    match year {
        1950..=2049 => Ok(tlv(UTC_TIME, format!("{:02}{rest}", year % 100).as_bytes())),
        2050..=9999 => Ok(tlv(GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes())),
        _ => Err(format!("year {year} cannot be written in a certificate")),
    }
}

/// Object identifiers used by the encoders here and in the local CA.
pub(crate) mod oid {
    pub(crate) const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];
    pub(crate) const ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
    pub(crate) const ECDSA_WITH_SHA384: &[u64] = &[1, 2, 840, 10045, 4, 3, 3];
    pub(crate) const ED25519: &[u64] = &[1, 3, 101, 112];
    pub(crate) const SHA256_WITH_RSA: &[u64] = &[1, 2, 840, 113549, 1, 1, 11];
    pub(crate) const SUBJECT_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 14];
    pub(crate) const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
    pub(crate) const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];
    pub(crate) const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
    pub(crate) const AUTHORITY_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 35];
    pub(crate) const EXT_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
    pub(crate) const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
}
