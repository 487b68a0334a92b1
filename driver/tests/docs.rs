//! Keeps the user documentation in step with the code: the attribute reference against the
//! parser (both directions), and the `certvol node` flags against README.md and docs/.
//!
//! The parser has no public list of keys, so the list is taken from the parser's own behaviour:
//! the `UnknownKey` error for a made-up key lists every key accepted under that prefix, and each
//! key is then confirmed by parsing a context that sets it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use certvol_driver::spec::attrs::{self, AttrError, CERT_MANAGER_PREFIX, CERTVOL_PREFIX};

const PREFIXES: [&str; 2] = [CERTVOL_PREFIX, CERT_MANAGER_PREFIX];

fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is driver/; the docs live one level up.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("driver/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// How the parser treats `key` (full, prefixed) when set to `value` in an otherwise valid context.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Accepted,
    NotSupported,
    Rejected(String),
}

fn verdict(key: &str, value: &str) -> Verdict {
    let mut ctx: HashMap<String, String> = HashMap::new();
    // A minimal valid spec under the other keys' feet; the key under test may override them.
    ctx.insert(format!("{CERTVOL_PREFIX}issuer-name"), "ca".into());
    ctx.insert(format!("{CERTVOL_PREFIX}dns-names"), "a.example".into());
    ctx.insert(key.to_owned(), value.to_owned());
    match attrs::parse(&ctx) {
        Err(AttrError::NotSupported { .. }) => Verdict::NotSupported,
        Err(e @ (AttrError::UnknownKey { .. } | AttrError::WrongPrefix { .. })) => {
            Verdict::Rejected(e.to_string())
        }
        // Any other outcome (success, or a complaint about the value or a combination) means
        // the key itself is known.
        _ => Verdict::Accepted,
    }
}

/// The keys (without prefix) the parser accepts under `prefix`, read from its UnknownKey error.
fn accepted_keys(prefix: &str) -> BTreeSet<String> {
    let probe = format!("{prefix}zz-not-a-key");
    let mut ctx = HashMap::new();
    ctx.insert(probe, "x".to_owned());
    match attrs::parse(&ctx) {
        Err(AttrError::UnknownKey { accepted, .. }) => {
            let keys: BTreeSet<String> = accepted.split(", ").map(str::to_owned).collect();
            for key in &keys {
                let full = format!("{prefix}{key}");
                assert_eq!(
                    verdict(&full, "1"),
                    Verdict::Accepted,
                    "the parser lists {full} as accepted but rejects it"
                );
            }
            keys
        }
        other => panic!("an unknown key under {prefix} must be an UnknownKey error, got {other:?}"),
    }
}

/// Every `csi.certvol.io/<key>` or `csi.cert-manager.io/<key>` mentioned in `text`.
fn mentioned_keys(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for prefix in PREFIXES {
        for (pos, _) in text.match_indices(prefix) {
            // `.../plugins/csi.certvol.io/csi.sock` is a path that contains the driver name,
            // not an attribute key.
            if text[..pos].ends_with(|c: char| c == '/' || c.is_ascii_alphanumeric()) {
                continue;
            }
            let rest = &text[pos + prefix.len()..];
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(rest.len());
            if len > 0 {
                found.insert(format!("{prefix}{}", &rest[..len]));
            }
        }
    }
    found
}

#[test]
fn every_accepted_key_has_a_row_in_the_reference() {
    let doc = read("docs/attributes.md");
    let certvol = accepted_keys(CERTVOL_PREFIX);
    let cert_manager = accepted_keys(CERT_MANAGER_PREFIX);
    assert!(
        certvol.contains("issuer-name") && cert_manager.contains("issuer-name"),
        "key probe found nothing: {certvol:?} / {cert_manager:?}"
    );
    for key in certvol.iter().chain(&cert_manager) {
        let row = format!("| `{key}`");
        assert!(
            doc.lines().any(|l| l.starts_with(&row)),
            "docs/attributes.md has no table row for the accepted key {key:?}"
        );
    }
    // Keys only ours accepts must be marked as such in their row.
    for key in certvol.difference(&cert_manager) {
        let row = format!("| `{key}`");
        let line = doc
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_default();
        assert!(
            line.contains("certvol only"),
            "the row of {key:?} must say \"certvol only\": {line}"
        );
    }
    // ...and keys both accept must not be.
    for key in certvol.intersection(&cert_manager) {
        let row = format!("| `{key}`");
        let line = doc
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_default();
        assert!(
            !line.contains("certvol only"),
            "{key:?} is not certvol only"
        );
    }
}

#[test]
fn every_key_the_docs_mention_is_accepted_or_listed_as_not_supported() {
    let attributes = read("docs/attributes.md");
    let (_, not_supported) = attributes
        .split_once("## Not supported yet")
        .expect("docs/attributes.md has a \"Not supported yet\" section");
    let not_supported = not_supported.split("\n## ").next().unwrap_or(not_supported);
    let listed = mentioned_keys(not_supported);
    assert!(!listed.is_empty(), "the not-supported section lists no key");

    let mut docs = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(repo_root().join("docs")).expect("docs/ exists") {
        let name = entry.expect("docs entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in &docs {
        for key in mentioned_keys(&read(doc)) {
            match verdict(&key, "true") {
                Verdict::Accepted => {}
                Verdict::NotSupported => assert!(
                    listed.contains(&key),
                    "{doc} mentions {key}, which the parser rejects as not supported yet, but \
                     the \"Not supported yet\" section of docs/attributes.md does not list it"
                ),
                Verdict::Rejected(why) => panic!("{doc} mentions {key}, which is rejected: {why}"),
            }
        }
    }
    // The other direction for the not-supported list: each entry really is "not supported".
    for key in &listed {
        if key.ends_with("/renew") {
            continue; // named in the hint ("set csi.certvol.io/renew to false"), and accepted
        }
        assert_eq!(
            verdict(key, "true"),
            Verdict::NotSupported,
            "docs/attributes.md lists {key} as not supported yet"
        );
    }
}

#[test]
fn every_node_flag_is_documented() {
    let out = Command::new(env!("CARGO_BIN_EXE_certvol"))
        .args(["node", "--help"])
        .env_remove("NODE_NAME")
        .env_remove("CSI_ENDPOINT")
        .output()
        .expect("run certvol node --help");
    assert!(out.status.success(), "certvol node --help failed");
    let help = String::from_utf8_lossy(&out.stdout);

    let mut flags = BTreeSet::new();
    for (pos, _) in help.match_indices("--") {
        let rest = &help[pos + 2..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        if len > 1 {
            flags.insert(format!("--{}", &rest[..len]));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    assert!(
        flags.contains("--node-id") && flags.contains("--issuer"),
        "flag scan found too little in:\n{help}"
    );

    let mut docs = read("README.md");
    for entry in std::fs::read_dir(repo_root().join("docs")).expect("docs/ exists") {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push_str(&std::fs::read_to_string(&path).expect("read doc"));
        }
    }
    for flag in &flags {
        assert!(
            docs.contains(&format!("`{flag}`")),
            "`certvol node` flag {flag} is not documented in README.md or docs/"
        );
    }
}

/// Every inline certvol volume in the example pod specs (docs/examples/*.yaml)
/// parses, so an example never shows an attribute the driver would refuse.
#[test]
fn example_pod_specs_parse() {
    let dir = repo_root().join("docs").join("examples");
    let mut checked = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "the three example pod specs: {paths:?}");
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            let Some(volumes) = pod_volumes(&value) else {
                continue;
            };
            for volume in volumes {
                let Some(csi) = volume.get("csi") else {
                    continue;
                };
                let driver = csi.get("driver").and_then(|d| d.as_str()).unwrap_or("");
                if driver != "csi.certvol.io" {
                    continue;
                }
                let mut ctx: HashMap<String, String> = HashMap::new();
                if let Some(attrs) = csi.get("volumeAttributes").and_then(|a| a.as_mapping()) {
                    for (k, v) in attrs {
                        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                            panic!("{}: attributes are strings: {k:?}: {v:?}", path.display());
                        };
                        ctx.insert(k.to_owned(), v.to_owned());
                    }
                }
                // What kubelet adds with podInfoOnMount.
                for (k, v) in [
                    ("csi.storage.k8s.io/pod.name", "example-0"),
                    ("csi.storage.k8s.io/pod.namespace", "example"),
                    ("csi.storage.k8s.io/pod.uid", "0b5c-11"),
                    ("csi.storage.k8s.io/serviceAccount.name", "example"),
                ] {
                    ctx.insert(k.into(), v.into());
                }
                if let Err(e) = attrs::parse(&ctx) {
                    panic!("{}: volume {:?}: {e}", path.display(), volume.get("name"));
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "found {checked} certvol volumes in the examples"
    );
}

/// `spec.volumes` of a Pod, or `spec.template.spec.volumes` of a workload.
fn pod_volumes(doc: &serde_yaml::Value) -> Option<&Vec<serde_yaml::Value>> {
    let spec = doc.get("spec")?;
    let pod = spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .unwrap_or(spec);
    pod.get("volumes")?.as_sequence()
}
