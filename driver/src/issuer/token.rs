//! The pod's service-account token, as kubelet passes it when the CSIDriver object lists
//! `tokenRequests`: creating the CertificateRequest with it makes the pod (not the node plugin)
//! the requester, so approver policies can decide per pod.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use zeroize::Zeroizing;

/// Volume-context key kubelet fills with `{"<audience>": {"token", "expirationTimestamp"}}`.
pub(crate) const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// A bearer token held only in memory: zeroed on drop and redacted from `Debug`, so a request that
/// carries one can be logged with `?req` without leaking it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    pub fn new(token: Zeroizing<String>) -> Self {
        BearerToken(token)
    }

    /// The token itself. Only for building an authenticated client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[derive(Deserialize)]
struct TokenEntry {
    token: String,
}

/// Reads the pod's token from a CSI volume context. `Ok(None)` when kubelet sent no tokens (the
/// CSIDriver has no `tokenRequests`). The API server's default audience (`""`) is preferred;
/// otherwise exactly one audience must be present, since the driver cannot tell which of several
/// the API server accepts.
///
/// Error messages never quote the JSON: it holds the token.
pub fn token_from_context(ctx: &HashMap<String, String>) -> Result<Option<BearerToken>, String> {
    let Some(raw) = ctx.get(TOKENS_KEY) else {
        return Ok(None);
    };
    if raw.trim().is_empty() {
        return Ok(None);
    }
    // serde_json's own messages can quote the offending value (the token), so only its position
    // is reported.
    let mut entries: HashMap<String, TokenEntry> = serde_json::from_str(raw).map_err(|e| {
        format!(
            "{TOKENS_KEY} is not a JSON object of the form {{\"<audience>\": {{\"token\": ..., \"expirationTimestamp\": ...}}}} (error at line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    let entry = match entries.remove("") {
        Some(entry) => entry,
        None if entries.len() == 1 => match entries.into_values().next() {
            Some(entry) => entry,
            None => return Ok(None),
        },
        None if entries.is_empty() => return Ok(None),
        None => {
            let mut audiences: Vec<String> = entries.into_keys().collect();
            audiences.sort();
            return Err(format!(
                "{TOKENS_KEY} holds tokens for several audiences ({}) and none for the API server's default audience \"\"; list an audience-less entry in the CSIDriver's tokenRequests",
                audiences.join(", ")
            ));
        }
    };
    let token = Zeroizing::new(entry.token);
    if token.trim().is_empty() {
        return Err(format!("{TOKENS_KEY} holds an empty token"));
    }
    Ok(Some(BearerToken::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig";

    fn ctx(tokens: &str) -> HashMap<String, String> {
        HashMap::from([
            (TOKENS_KEY.to_owned(), tokens.to_owned()),
            ("csi.storage.k8s.io/pod.name".to_owned(), "web-0".to_owned()),
        ])
    }

    #[test]
    fn prefers_the_default_audience() {
        let json = format!(
            r#"{{"vault": {{"token": "other", "expirationTimestamp": "2026-11-23T12:00:00Z"}},
                 "": {{"token": "{SECRET}", "expirationTimestamp": "2026-11-23T12:00:00Z"}}}}"#
        );
        let token = token_from_context(&ctx(&json)).unwrap().unwrap();
        assert_eq!(token.expose(), SECRET);
    }

    #[test]
    fn takes_the_only_audience() {
        let json = format!(r#"{{"api": {{"token": "{SECRET}", "expirationTimestamp": "x"}}}}"#);
        assert_eq!(
            token_from_context(&ctx(&json)).unwrap().unwrap().expose(),
            SECRET
        );
    }

    #[test]
    fn absent_or_empty_means_no_token() {
        assert!(token_from_context(&HashMap::new()).unwrap().is_none());
        assert!(token_from_context(&ctx("")).unwrap().is_none());
        assert!(token_from_context(&ctx("{}")).unwrap().is_none());
    }

    #[test]
    fn ambiguous_audiences_are_an_error_naming_them() {
        let err = token_from_context(&ctx(r#"{"b": {"token": "t1"}, "a": {"token": "t2"}}"#))
            .unwrap_err();
        assert!(err.contains("(a, b)"), "{err}");
        assert!(!err.contains("t1") && !err.contains("t2"), "{err}");
    }

    #[test]
    fn malformed_json_errors_never_quote_the_token() {
        // A token where an object is expected: serde_json would quote it in its own message.
        let err = token_from_context(&ctx(&format!(r#"{{"": "{SECRET}"}}"#))).unwrap_err();
        assert!(err.contains(TOKENS_KEY), "{err}");
        assert!(!err.contains(SECRET), "{err}");
        let err = token_from_context(&ctx(&format!(r#"{{"": {{"token": "{SECRET}""#))).unwrap_err();
        assert!(!err.contains(SECRET), "{err}");
        let err = token_from_context(&ctx(r#"{"": {"token": "  "}}"#)).unwrap_err();
        assert!(err.contains("empty token"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let json = format!(r#"{{"": {{"token": "{SECRET}"}}}}"#);
        let token = token_from_context(&ctx(&json)).unwrap();
        let shown = format!("{token:?} {token:#?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
        assert!(shown.contains("redacted"));

        let mut req = crate::issuer::certmanager::resource::tests::issue_request(
            crate::issuer::certmanager::resource::tests::cert_request(),
        );
        req.token = token;
        let shown = format!("{req:?}");
        assert!(!shown.contains(SECRET), "{shown}");
    }
}
