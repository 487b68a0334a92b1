//! Property tests for the parsers that read hostile input: the volume attributes (written by
//! whoever may create pods), `state.json` (on disk, possibly torn or tampered with) and PEM text
//! from the API (issuer responses, ConfigMaps, Secrets).
//!
//! Budget and reproducibility: every runner uses a fixed case count and a fixed seed
//! (`RngSeed::Fixed`), with failure persistence off, so CI runs the same inputs every time and
//! a failure reported by CI reproduces locally with `cargo test -p certvol-driver --test
//! properties`. To explore other inputs, change `SEED` (or the case counts) locally.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};

use certvol_driver::files::store;
use certvol_driver::spec::attrs::{self, CERT_MANAGER_PREFIX, CERTVOL_PREFIX};
use certvol_driver::spec::request::FileNames;
use certvol_driver::trust::bundle::{self, SourcePem};
use certvol_driver::x509::pki::{self, MAX_PEM_BYTES, PkiError};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRunner};

const SEED: u64 = 0x6365_7274_766f_6c21;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(SEED),
        // Shrinking a 64 KiB string in a debug build takes long; the unshrunk case is printed.
        max_shrink_iters: 256,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Attributes

/// Every key name the parser accepts after a prefix.
const KEY_NAMES: [&str; 47] = attrs::KEYS;

/// The keys that name a file in the volume; weighted up so that name clashes and bad names
/// actually happen.
const FILE_KEYS: [&str; 8] = [
    "ca-file",
    "certificate-file",
    "privatekey-file",
    "pkcs12-filename",
    "key-chain-file",
    "chain-file",
    "truststore-pkcs12-file",
    "trust-bundle-file",
];

const POD_KEYS: [&str; 4] = [
    "csi.storage.k8s.io/pod.name",
    "csi.storage.k8s.io/pod.namespace",
    "csi.storage.k8s.io/pod.uid",
    "csi.storage.k8s.io/serviceAccount.name",
];

fn well_known(key: &str) -> bool {
    POD_KEYS.contains(&key)
        || key == attrs::TOKENS_KEY
        || [CERTVOL_PREFIX, CERT_MANAGER_PREFIX]
            .iter()
            .filter_map(|p| key.strip_prefix(p))
            .any(|name| KEY_NAMES.contains(&name))
}

fn key_strategy() -> BoxedStrategy<String> {
    let prefix = prop_oneof![Just(CERTVOL_PREFIX), Just(CERT_MANAGER_PREFIX)];
    prop_oneof![
        4 => (prefix.clone(), prop::sample::select(KEY_NAMES.to_vec()))
            .prop_map(|(p, k)| format!("{p}{k}")),
        3 => (prefix.clone(), prop::sample::select(FILE_KEYS.to_vec()))
            .prop_map(|(p, k)| format!("{p}{k}")),
        1 => prop::sample::select(POD_KEYS.to_vec()).prop_map(str::to_owned),
        1 => (prefix, any::<String>()).prop_map(|(p, k)| format!("{p}{k}")),
        1 => any::<String>(),
        1 => Just("example.com/annotation".to_owned()),
    ]
    .boxed()
}

fn value_strategy() -> BoxedStrategy<String> {
    let fixed: Vec<String> = [
        "",
        " ",
        "\0",
        "a\0b",
        "/",
        "a/b",
        ".",
        "..",
        "..data",
        "../etc/passwd",
        ".hidden",
        "tls.crt",
        "tls.key",
        "ca.crt",
        "bundle.pem",
        "keystore.p12",
        " tls.crt",
        "true",
        "false",
        "TRUE",
        "ECDSA",
        "RSA",
        "Ed25519",
        "256",
        "2048",
        "PKCS1",
        "PKCS8",
        "1h",
        "2160h",
        "-1h",
        "99999999999999999999h",
        "1000",
        "4294967295",
        "app.example.com",
        "*.example.com",
        "10.0.0.1",
        "::1",
        "spiffe://cluster.local/ns/shop/sa/web",
        "a,b,,c",
        ",",
        "${POD_NAME}",
        "${POD_NAME}.crt",
        "${POD_NAMESPACE}/${POD_NAME}",
        "${",
        "${}",
        "${NOPE}",
        "$${POD_NAME}",
        "ca",
        "Issuer",
        "ClusterIssuer",
        "example.com/signer",
        "CN=app,O=shop",
        "digital signature,key encipherment,server auth",
        "shop/ca:ca.crt",
        "zürich.example",
        "日本語.crt",
        "\u{202e}gpj.exe",
        "emoji-😀.pem",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let huge: Vec<String> = vec![
        "a".repeat(64 * 1024),
        "é".repeat(32 * 1024),
        "${POD_NAME},".repeat(64 * 1024 / 12),
        "x,".repeat(32 * 1024),
        "/".repeat(64 * 1024),
    ];
    prop_oneof![
        6 => prop::sample::select(fixed.clone()),
        1 => prop::sample::select(huge),
        2 => any::<String>(),
        // Comma lists and variables glued out of the tricky pieces.
        2 => prop::collection::vec(prop::sample::select(fixed), 1..5)
            .prop_map(|parts| parts.join(",")),
    ]
    .boxed()
}

fn context_strategy() -> impl Strategy<Value = HashMap<String, String>> {
    let base = prop::option::of(Just(vec![
        (format!("{CERT_MANAGER_PREFIX}issuer-name"), "ca".to_owned()),
        (
            format!("{CERT_MANAGER_PREFIX}common-name"),
            "app".to_owned(),
        ),
    ]));
    let pod = prop::collection::vec(
        (prop::sample::select(POD_KEYS.to_vec()), value_strategy()),
        0..4,
    );
    let extra = prop::collection::vec((key_strategy(), value_strategy()), 0..8);
    (base, pod, extra).prop_map(|(base, pod, extra)| {
        let mut ctx: HashMap<String, String> = base.unwrap_or_default().into_iter().collect();
        ctx.extend(pod.into_iter().map(|(k, v)| (k.to_owned(), v)));
        ctx.extend(extra);
        ctx
    })
}

fn check_plain_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name.starts_with("..")
    {
        return Err(format!("file name {name:?} is not a plain name"));
    }
    Ok(())
}

#[test]
fn attribute_parser_rejects_or_yields_plain_distinct_file_names() {
    let mut runner = runner(2048);
    let parsed = Cell::new(0usize);
    let rejected = Cell::new(0usize);
    let custom_names = Cell::new(0usize);
    runner
        .run(&context_strategy(), |ctx| {
            match attrs::parse(&ctx) {
                Ok(request) => {
                    parsed.set(parsed.get() + 1);
                    let names = request.files.all();
                    if request.files != FileNames::default() {
                        custom_names.set(custom_names.get() + 1);
                    }
                    for name in &names {
                        check_plain_name(name).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                    let distinct: BTreeSet<&str> = names.iter().copied().collect();
                    prop_assert_eq!(distinct.len(), names.len(), "duplicate names {:?}", names);
                }
                Err(e) => {
                    rejected.set(rejected.get() + 1);
                    let key = e.attribute();
                    prop_assert!(
                        ctx.contains_key(key) || well_known(key),
                        "error names {:?}, neither an input key nor a known key: {}",
                        key,
                        e
                    );
                    // The message quotes the key (Debug-escaped, so control characters stay visible).
                    prop_assert!(e.to_string().contains(&format!("{key:?}")), "{}", e);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "attrs: {} parsed ({} with custom file names), {} rejected",
        parsed.get(),
        custom_names.get(),
        rejected.get()
    );
    assert!(custom_names.get() >= 20, "custom file names never parsed");
    // Both branches must be exercised, or the properties above check nothing.
    assert!(parsed.get() >= 20, "only {} contexts parsed", parsed.get());
    assert!(
        rejected.get() >= 20,
        "only {} contexts rejected",
        rejected.get()
    );
}

// ---------------------------------------------------------------------------------------------
// state.json

fn valid_state_json() -> Vec<u8> {
    let state = serde_json::json!({
        "version": store::STATE_VERSION,
        "volume_id": "csi-0123456789abcdef",
        "target_path": "/var/lib/kubelet/pods/0b5c-11/volumes/kubernetes.io~csi/tls/mount",
        "node_id": "node-a",
        "issuer": "local",
        "context": {
            "csi.cert-manager.io/issuer-name": "ca",
            "csi.cert-manager.io/common-name": "app",
        },
        "mount_group": 2000,
        "phase": "published",
        "current": {
            "revision": 3,
            "request_name": "certvol-abc-3",
            "serial": "0a1b2c",
            "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2026-04-01T00:00:00Z",
            "renew_at": "2026-03-01T00:00:00Z",
        },
        "last_revision": 3,
        "requests": ["certvol-abc-2", "certvol-abc-3"],
        "renewal": { "failures": 1, "last_error": "denied" },
    });
    serde_json::to_vec_pretty(&state).unwrap_or_default()
}

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<prop::sample::Index>(), 1..64usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Flip(i, x) => {
            let at = i.index(bytes.len());
            bytes[at] ^= x;
        }
        Mutation::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

#[test]
fn state_decoder_rejects_garbage() {
    let mut runner = runner(1024);
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..4096), |bytes| {
            prop_assert!(store::decode(&bytes).is_err());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn state_decoder_survives_mutated_state() {
    let valid = valid_state_json();
    let original = store::decode(&valid).unwrap_or_else(|e| panic!("fixture: {e}"));
    let mut runner = runner(2048);
    let still_ok = Cell::new(0usize);
    runner
        .run(&prop::collection::vec(mutation(), 1..4), |mutations| {
            let mut bytes = valid.clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            match store::decode(&bytes) {
                Ok(state) => {
                    still_ok.set(still_ok.get() + 1);
                    prop_assert_eq!(state.version, store::STATE_VERSION);
                    // Whatever decoded must survive a save and load unchanged.
                    let again = serde_json::to_vec(&state)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(store::decode(&again).ok(), Some(state));
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
            // A torn write (a strict prefix, not just lost trailing whitespace) never decodes.
            if let [Mutation::Truncate(i)] = mutations.as_slice() {
                let cut = i.index(valid.len());
                if valid[cut..].iter().any(|b| !b.is_ascii_whitespace()) {
                    prop_assert!(store::decode(&valid[..cut]).is_err());
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Sanity: whitespace/value mutations sometimes keep it valid; the original stays decodable.
    eprintln!(
        "state: {} of 2048 mutated files still decoded",
        still_ok.get()
    );
    assert_eq!(store::decode(&valid).ok(), Some(original));
    assert!(still_ok.get() < 2048, "mutations never broke the state");
}

// ---------------------------------------------------------------------------------------------
// PEM from the API

/// A few real certificate blocks (public roots), re-encoded by the bundle code.
fn real_blocks() -> Vec<String> {
    let roots = bundle::assemble(&[bundle::public_roots()]);
    roots
        .ders()
        .take(4)
        .map(bundle::der_to_pem)
        .collect::<Vec<_>>()
}

fn pem_piece(real: Vec<String>) -> impl Strategy<Value = String> {
    let tokens: Vec<String> = [
        "-----BEGIN CERTIFICATE-----\n",
        "-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\n",
        "-----END PRIVATE KEY-----\n",
        "-----BEGIN ",
        "-----END ",
        "-----",
        "CERTIFICATE",
        "\n",
        "\r\n",
        "MIIBkTCB+wIJAK",
        "====",
        "!!notbase64!!",
        "Proc-Type: 4,ENCRYPTED\n",
        "\0",
        "é",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let real_for_trunc = real.clone();
    prop_oneof![
        4 => prop::sample::select(tokens),
        2 => prop::sample::select(real),
        2 => (prop::sample::select(real_for_trunc), any::<prop::sample::Index>())
            .prop_map(|(block, i)| block[..i.index(block.len())].to_owned()),
        1 => any::<String>(),
        1 => prop::collection::vec(
                prop::sample::select(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n".to_vec()
                ),
                0..512,
            )
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn pem_text(real: Vec<String>) -> impl Strategy<Value = String> {
    let pieces = prop::collection::vec(pem_piece(real.clone()), 0..12).prop_map(|p| p.concat());
    let mutated = (
        prop::collection::vec(prop::sample::select(real), 1..4),
        prop::collection::vec(mutation(), 1..4),
    )
        .prop_map(|(blocks, mutations)| {
            let mut bytes = blocks.concat().into_bytes();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        });
    prop_oneof![3 => pieces, 2 => mutated]
}

fn begin_markers(text: &str) -> usize {
    text.matches("-----BEGIN").count()
}

fn check_pem_chain(text: &str) -> Result<usize, TestCaseError> {
    match pki::parse_pem_chain(text) {
        Ok(chain) => {
            prop_assert!(!chain.is_empty());
            prop_assert!(chain.len() <= begin_markers(text));
            Ok(chain.len())
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            if text.len() > MAX_PEM_BYTES {
                prop_assert!(matches!(e, PkiError::TooLarge { .. }), "{e}");
            }
            Ok(0)
        }
    }
}

fn check_assemble(sources: &[SourcePem]) -> Result<usize, TestCaseError> {
    let bundle = bundle::assemble(sources);
    let markers: usize = sources.iter().map(|s| begin_markers(&s.pem)).sum();
    prop_assert!(bundle.certificates.len() + bundle.rejected.len() <= markers);
    let labels: BTreeSet<&str> = sources.iter().map(|s| s.label.as_str()).collect();
    for rejected in &bundle.rejected {
        prop_assert!(labels.contains(rejected.source.as_str()));
        prop_assert!(!rejected.reason.to_string().is_empty());
        prop_assert!(rejected.to_string().contains(&rejected.reason.to_string()));
    }
    let distinct: BTreeSet<&[u8]> = bundle.ders().collect();
    prop_assert_eq!(distinct.len(), bundle.certificates.len());
    // What the pod receives is clean PEM that parses back to the same certificates.
    if !bundle.certificates.is_empty() {
        let back =
            pki::parse_pem_chain(&bundle.pem()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Vec<&[u8]> = back.iter().map(|c| c.der.as_slice()).collect();
        prop_assert_eq!(back, bundle.ders().collect::<Vec<_>>());
    }
    Ok(bundle.certificates.len())
}

#[test]
fn pem_chain_parser_is_bounded_on_hostile_text() {
    let real = real_blocks();
    let mut runner = runner(512);
    let some_parsed = Cell::new(0usize);
    runner
        .run(&pem_text(real), |text| {
            if check_pem_chain(&text)? > 0 {
                some_parsed.set(some_parsed.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "pem chain: {} of 512 inputs held certificates",
        some_parsed.get()
    );
    assert!(
        some_parsed.get() >= 10,
        "only {} inputs held a certificate",
        some_parsed.get()
    );
}

#[test]
fn trust_bundle_assembly_is_bounded_and_explains_rejections() {
    let real = real_blocks();
    let sources = prop::collection::vec(
        (prop::sample::select(vec!["a", "b", "c"]), pem_text(real)),
        0..4,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(label, pem)| SourcePem::new(label, pem))
            .collect::<Vec<_>>()
    });
    let mut runner = runner(512);
    let with_certs = Cell::new(0usize);
    let with_rejections = Cell::new(0usize);
    runner
        .run(&sources, |sources| {
            if check_assemble(&sources)? > 0 {
                with_certs.set(with_certs.get() + 1);
            }
            if !bundle::assemble(&sources).rejected.is_empty() {
                with_rejections.set(with_rejections.get() + 1);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "bundle: {} with certificates, {} with rejections, of 512",
        with_certs.get(),
        with_rejections.get()
    );
    assert!(
        with_certs.get() >= 10,
        "only {} bundles held a certificate",
        with_certs.get()
    );
    assert!(
        with_rejections.get() >= 10,
        "only {} bundles rejected anything",
        with_rejections.get()
    );
}

/// Huge inputs are few but costly, so they get their own small budget.
#[test]
fn pem_parsers_on_huge_inputs() {
    let real = real_blocks();
    let huge = prop_oneof![
        // Just over the limit of the chain parser.
        Just("A".repeat(MAX_PEM_BYTES + 1)),
        // Many BEGIN lines without END: one rejection, no quadratic blow-up in output.
        Just("-----BEGIN CERTIFICATE-----\n".repeat(20_000)),
        Just("-----BEGIN X-----\n-----END X-----\n".repeat(20_000)),
        (prop::sample::select(real), 1..2000usize).prop_map(|(b, n)| b.repeat(n)),
        prop::collection::vec(any::<u8>(), 256 * 1024..=256 * 1024)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let mut runner = runner(12);
    runner
        .run(&huge, |text| {
            check_pem_chain(&text)?;
            check_assemble(&[SourcePem::new("huge", text)])?;
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
