//! Whole-parser tests: accepted values and errors, one table row per rule.

use std::net::IpAddr;

use super::*;
use crate::spec::request::{
    CaSource, FileNames, IssuerRef, KeyAlgorithm, KeyEncoding, KeyUsage, PasswordSource,
    Pkcs12Files, Pkcs12Profile, PodInfo, Sans, Subject,
};
use crate::spec::subject::LiteralSubject;

const CM: &str = "csi.cert-manager.io/";
const CV: &str = "csi.certvol.io/";
const POD: [(&str, &str); 4] = [
    ("csi.storage.k8s.io/pod.name", "web-0"),
    ("csi.storage.k8s.io/pod.namespace", "shop"),
    ("csi.storage.k8s.io/pod.uid", "0b5c-11"),
    ("csi.storage.k8s.io/serviceAccount.name", "web"),
];

/// Row name, extra attributes, check on the parsed request.
type AcceptedRow = (
    &'static str,
    &'static [(&'static str, &'static str)],
    fn(&CertRequest),
);
/// Extra attributes, expected `attribute()`, fragment of the message.
type ErrorRow<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A minimal valid cert-manager-style volume, with `extra` added or overriding.
pub(super) fn with(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut c = ctx(&[
        ("csi.cert-manager.io/issuer-name", "ca"),
        ("csi.cert-manager.io/common-name", "app"),
    ]);
    c.extend(ctx(extra));
    c
}

pub(super) fn parse_ok(extra: &[(&str, &str)]) -> CertRequest {
    match parse(&with(extra)) {
        Ok(r) => r,
        Err(e) => panic!("{extra:?} should parse, got: {e}"),
    }
}

#[test]
fn defaults_match_cert_manager() {
    let req = parse_ok(&[]);
    let expected = CertRequest {
        pod: PodInfo::default(),
        issuer: IssuerRef {
            name: "ca".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        },
        kube_csr: None,
        subject: Subject {
            common_name: Some("app".into()),
            ..Subject::default()
        },
        sans: Sans::default(),
        duration: Duration::from_secs(90 * 24 * 3600),
        renew_before: None,
        is_ca: false,
        usages: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        key_algorithm: KeyAlgorithm::Rsa2048,
        key_encoding: KeyEncoding::Pkcs1,
        reuse_private_key: false,
        renew: true,
        files: FileNames {
            ca: "ca.crt".into(),
            certificate: "tls.crt".into(),
            private_key: "tls.key".into(),
            key_chain: None,
            chain: None,
            trust_bundle: None,
            pkcs12: None,
        },
        fs_group: None,
        annotations: BTreeMap::new(),
        trust: None,
    };
    assert_eq!(req, expected);
}

#[test]
fn certvol_spec_defaults_to_ecdsa_p256_pkcs8() {
    let req = parse(&ctx(&[
        ("csi.certvol.io/issuer-name", "ca"),
        ("csi.certvol.io/common-name", "app"),
    ]))
    .unwrap();
    assert_eq!(req.key_algorithm, KeyAlgorithm::EcdsaP256);
    assert_eq!(req.key_encoding, KeyEncoding::Pkcs8);
    // The home prefix comes from issuer-name only: other keys under ours do not change it.
    let req = parse_ok(&[("csi.certvol.io/dns-names", "a.example")]);
    assert_eq!(req.key_algorithm, KeyAlgorithm::Rsa2048);
}

#[test]
fn pod_info_annotations_and_dropped_keys() {
    let mut extra = POD.to_vec();
    extra.extend([
        ("example.com/team", "payments"),
        ("csi.storage.k8s.io/ephemeral", "true"),
        (TOKENS_KEY, "{\"aud\":{\"token\":\"secret\"}}"),
        ("no-prefix", "dropped"),
    ]);
    let req = parse_ok(&extra);
    assert_eq!(
        req.pod,
        PodInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            uid: "0b5c-11".into(),
            service_account: "web".into(),
        }
    );
    assert_eq!(
        req.annotations,
        BTreeMap::from([("example.com/team".to_owned(), "payments".to_owned())])
    );
}

#[test]
fn input_limits_name_the_attribute_and_the_limit() {
    // The whole context.
    let big = "x".repeat(MAX_CONTEXT_BYTES);
    let mut extra = POD.to_vec();
    extra.push(("example.com/blob", big.as_str()));
    let text = parse(&with(&extra)).unwrap_err().to_string();
    assert!(
        text.starts_with("volume attribute \"example.com/blob\": the volume context")
            && text.contains(&format!("at most {MAX_CONTEXT_BYTES} bytes")),
        "{text}"
    );
    assert!(
        text.len() < 400,
        "the message must not echo the value: {text}"
    );

    // Subject alternative names: exactly the limit passes, one more is refused.
    let names = |n: usize| {
        (0..n)
            .map(|i| format!("n{i}.example.com"))
            .collect::<Vec<_>>()
    };
    let ok = names(MAX_SANS).join(",");
    let mut extra = POD.to_vec();
    extra.push(("csi.cert-manager.io/dns-names", ok.as_str()));
    assert_eq!(parse_ok(&extra).sans.dns_names.len(), MAX_SANS);
    let over = names(MAX_SANS - 1).join(",");
    let mut extra = POD.to_vec();
    extra.push(("csi.cert-manager.io/dns-names", over.as_str()));
    extra.push(("csi.cert-manager.io/ip-sans", "10.0.0.1,10.0.0.2"));
    let text = parse(&with(&extra)).unwrap_err().to_string();
    assert!(
        text.starts_with("volume attribute \"csi.cert-manager.io/ip-sans\"")
            && text.contains(&format!("at most {MAX_SANS} is accepted")),
        "{text}"
    );

    // Pass-through annotations.
    let keys: Vec<String> = (0..=MAX_ANNOTATIONS)
        .map(|i| format!("example.com/a{i:02}"))
        .collect();
    let mut extra = POD.to_vec();
    extra.extend(keys.iter().map(|k| (k.as_str(), "v")));
    let text = parse(&with(&extra)).unwrap_err().to_string();
    assert!(
        text.contains(&format!("\"{}\"", keys[MAX_ANNOTATIONS]))
            && text.contains("pass-through annotations"),
        "{text}"
    );
}

#[test]
fn certvols_annotation_prefix_is_reserved() {
    let mut extra = POD.to_vec();
    extra.push(("certvol.io/node-name", "another-node"));
    let err = parse(&with(&extra)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"certvol.io/node-name\"") && text.contains("reserves"),
        "{text}"
    );
}

#[test]
fn stable_context_drops_only_tokens_and_literal_passwords() {
    let c = with(&[
        (TOKENS_KEY, "t1"),
        ("example.com/x", "y"),
        ("csi.cert-manager.io/pkcs12-enable", "true"),
        ("csi.cert-manager.io/pkcs12-password", "hunter2"),
        ("csi.certvol.io/pkcs12-password", "hunter3"),
        ("csi.certvol.io/pkcs12-password-key", "pw"),
    ]);
    let stable = stable_context(&c);
    assert!(!stable.contains_key(TOKENS_KEY));
    assert_eq!(
        stable.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "csi.cert-manager.io/common-name",
            "csi.cert-manager.io/issuer-name",
            "csi.cert-manager.io/pkcs12-enable",
            "csi.certvol.io/pkcs12-password-key",
            "example.com/x",
        ]
    );
    assert!(!format!("{stable:?}").contains("hunter"));
    let c = with(&[(TOKENS_KEY, "t1"), ("example.com/x", "y")]);
    let stable = stable_context(&c);
    assert_eq!(stable.len(), 3);
    let again = with(&[(TOKENS_KEY, "t2"), ("example.com/x", "y")]);
    assert_eq!(stable, stable_context(&again));
    let changed = with(&[(TOKENS_KEY, "t2"), ("example.com/x", "z")]);
    assert_ne!(stable, stable_context(&changed));
}

/// Accepted values, one row per key and behaviour: extra attributes → check.
#[test]
fn signer_name_replaces_issuer_name() {
    let req = parse(&ctx(&[
        ("csi.certvol.io/signer-name", "example.com/workloads"),
        ("csi.certvol.io/dns-names", "a.example"),
    ]))
    .unwrap();
    assert_eq!(req.issuer.name, "");
    assert_eq!(req.kube_csr.unwrap().signer_name, "example.com/workloads");
    // A certvol spec: ECDSA by default.
    assert_eq!(req.key_algorithm, KeyAlgorithm::EcdsaP256);
    let err = parse(&ctx(&[("csi.certvol.io/dns-names", "a.example")])).unwrap_err();
    assert!(err.to_string().contains("signer-name"), "{err}");
}

#[test]
fn accepted_values_table() {
    let rows: &[AcceptedRow] = &[
        (
            "issuer-kind",
            &[("csi.cert-manager.io/issuer-kind", "ClusterIssuer")],
            |r| assert_eq!(r.issuer.kind, "ClusterIssuer"),
        ),
        (
            "issuer-group",
            &[("csi.cert-manager.io/issuer-group", "example.com")],
            |r| assert_eq!(r.issuer.group, "example.com"),
        ),
        (
            "signer-name with the default CA source",
            &[("csi.certvol.io/signer-name", "example.com/workloads.v1")],
            |r| {
                let k = r.kube_csr.as_ref().unwrap();
                assert_eq!(k.signer_name, "example.com/workloads.v1");
                assert_eq!(k.ca_source, CaSource::ClusterTrustBundleSigner);
            },
        ),
        (
            "ca-source: a named ClusterTrustBundle",
            &[
                ("csi.certvol.io/signer-name", "example.com/w"),
                (
                    "csi.certvol.io/ca-source",
                    "clustertrustbundle:example.com:w:v2",
                ),
            ],
            |r| {
                assert_eq!(
                    r.kube_csr.as_ref().unwrap().ca_source,
                    CaSource::ClusterTrustBundle("example.com:w:v2".into())
                )
            },
        ),
        (
            "ca-source: a ConfigMap key",
            &[
                ("csi.certvol.io/signer-name", "example.com/w"),
                ("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt"),
            ],
            |r| {
                assert_eq!(
                    r.kube_csr.as_ref().unwrap().ca_source,
                    CaSource::ConfigMap {
                        name: "corp-ca".into(),
                        key: "ca.crt".into()
                    }
                )
            },
        ),
        (
            "ca-source: a Secret key",
            &[
                ("csi.certvol.io/signer-name", "example.com/w"),
                ("csi.certvol.io/ca-source", "secret:corp-ca/tls_ca.pem"),
            ],
            |r| {
                assert_eq!(
                    r.kube_csr.as_ref().unwrap().ca_source,
                    CaSource::Secret {
                        name: "corp-ca".into(),
                        key: "tls_ca.pem".into()
                    }
                )
            },
        ),
        (
            "ours wins over cert-manager's",
            &[
                ("csi.certvol.io/issuer-name", "mine"),
                ("csi.certvol.io/common-name", "ours"),
            ],
            |r| {
                assert_eq!(r.issuer.name, "mine");
                assert_eq!(r.subject.common_name.as_deref(), Some("ours"));
                // issuer-name under ours makes it a certvol spec.
                assert_eq!(r.key_algorithm, KeyAlgorithm::EcdsaP256);
            },
        ),
        (
            "empty value under ours does not hide cert-manager's",
            &[
                ("csi.certvol.io/common-name", ""),
                ("csi.certvol.io/issuer-kind", ""),
            ],
            |r| {
                assert_eq!(r.subject.common_name.as_deref(), Some("app"));
                assert_eq!(r.issuer.kind, "Issuer");
            },
        ),
        (
            "dns-names trimmed, empty entries ignored, wildcard",
            &[(
                "csi.cert-manager.io/dns-names",
                " a.example.com, ,*.b-1.example.com,, ",
            )],
            |r| assert_eq!(r.sans.dns_names, ["a.example.com", "*.b-1.example.com"]),
        ),
        (
            "dns-names with variables",
            &[(
                "csi.cert-manager.io/dns-names",
                "${POD_NAME}.${POD_NAMESPACE}.svc",
            )],
            |r| assert_eq!(r.sans.dns_names, ["web-0.shop.svc"]),
        ),
        (
            "ip-sans",
            &[("csi.cert-manager.io/ip-sans", "10.0.0.1, fd00::1")],
            |r| {
                assert_eq!(
                    r.sans.ip_addresses,
                    [
                        "10.0.0.1".parse::<IpAddr>().unwrap(),
                        "fd00::1".parse().unwrap()
                    ]
                )
            },
        ),
        (
            "uri-sans with variables",
            &[(
                "csi.cert-manager.io/uri-sans",
                "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME},urn:x",
            )],
            |r| {
                assert_eq!(
                    r.sans.uris,
                    ["spiffe://cluster.local/ns/shop/sa/web", "urn:x"]
                )
            },
        ),
        (
            "duration 1h30m",
            &[("csi.cert-manager.io/duration", "1h30m")],
            |r| assert_eq!(r.duration, Duration::from_secs(5400)),
        ),
        (
            "duration decimal",
            &[("csi.cert-manager.io/duration", "1.5h")],
            |r| assert_eq!(r.duration, Duration::from_secs(5400)),
        ),
        (
            "duration µs and ms",
            &[("csi.cert-manager.io/duration", "1s500ms250µs")],
            |r| assert_eq!(r.duration, Duration::from_micros(1_500_250)),
        ),
        (
            "is-ca true adds cert sign",
            &[("csi.cert-manager.io/is-ca", "true")],
            |r| {
                assert!(r.is_ca);
                assert_eq!(
                    r.usages,
                    [
                        KeyUsage::DigitalSignature,
                        KeyUsage::KeyEncipherment,
                        KeyUsage::CertSign
                    ]
                );
            },
        ),
        (
            "is-ca false",
            &[("csi.cert-manager.io/is-ca", "false")],
            |r| assert!(!r.is_ca),
        ),
        (
            "key-usages sorted and deduplicated",
            &[(
                "csi.cert-manager.io/key-usages",
                "client auth, server auth,client auth,",
            )],
            |r| assert_eq!(r.usages, [KeyUsage::ServerAuth, KeyUsage::ClientAuth]),
        ),
        (
            "key-usages with is-ca",
            &[
                (
                    "csi.cert-manager.io/key-usages",
                    "cert sign, digital signature",
                ),
                ("csi.cert-manager.io/is-ca", "true"),
            ],
            |r| assert_eq!(r.usages, [KeyUsage::DigitalSignature, KeyUsage::CertSign]),
        ),
        (
            "key-algorithm ecdsa",
            &[("csi.cert-manager.io/key-algorithm", "ecdsa")],
            |r| {
                assert_eq!(
                    (r.key_algorithm, r.key_encoding),
                    (KeyAlgorithm::EcdsaP256, KeyEncoding::Pkcs8)
                )
            },
        ),
        (
            "key-algorithm mixed case, ECDSA 384",
            &[
                ("csi.cert-manager.io/key-algorithm", "EcDsA"),
                ("csi.cert-manager.io/key-size", "384"),
            ],
            |r| assert_eq!(r.key_algorithm, KeyAlgorithm::EcdsaP384),
        ),
        (
            "key-algorithm Ed25519",
            &[("csi.cert-manager.io/key-algorithm", "Ed25519")],
            |r| {
                assert_eq!(
                    (r.key_algorithm, r.key_encoding),
                    (KeyAlgorithm::Ed25519, KeyEncoding::Pkcs8)
                )
            },
        ),
        (
            "RSA 3072",
            &[
                ("csi.cert-manager.io/key-algorithm", "RSA"),
                ("csi.cert-manager.io/key-size", "3072"),
            ],
            |r| assert_eq!(r.key_algorithm, KeyAlgorithm::Rsa3072),
        ),
        (
            "key-size alone follows the cert-manager default (RSA)",
            &[("csi.cert-manager.io/key-size", "4096")],
            |r| assert_eq!(r.key_algorithm, KeyAlgorithm::Rsa4096),
        ),
        (
            "key-size alone follows the certvol default (ECDSA)",
            &[
                ("csi.certvol.io/issuer-name", "ca"),
                ("csi.certvol.io/key-size", "384"),
            ],
            |r| assert_eq!(r.key_algorithm, KeyAlgorithm::EcdsaP384),
        ),
        (
            "certvol spec can still ask for RSA",
            &[
                ("csi.certvol.io/issuer-name", "ca"),
                ("csi.certvol.io/key-algorithm", "rsa"),
            ],
            |r| {
                assert_eq!(
                    (r.key_algorithm, r.key_encoding),
                    (KeyAlgorithm::Rsa2048, KeyEncoding::Pkcs1)
                )
            },
        ),
        (
            "key-encoding pkcs8 with RSA",
            &[("csi.cert-manager.io/key-encoding", "pkcs8")],
            |r| assert_eq!(r.key_encoding, KeyEncoding::Pkcs8),
        ),
        (
            "key-encoding PKCS1 with ECDSA (SEC1)",
            &[
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-encoding", "PKCS1"),
            ],
            |r| assert_eq!(r.key_encoding, KeyEncoding::Pkcs1),
        ),
        (
            "literal-subject with variables and escapes",
            &[
                ("csi.cert-manager.io/common-name", ""),
                (
                    "csi.cert-manager.io/literal-subject",
                    "CN=${POD_NAME},O=Example\\, Inc+OU=web,1.2.3=x",
                ),
            ],
            |r| {
                assert_eq!(
                    r.subject.literal.as_ref().map(LiteralSubject::as_str),
                    Some("CN=web-0,O=Example\\, Inc+OU=web,1.2.3=x")
                );
                assert_eq!(r.subject.common_name, None);
            },
        ),
        (
            "subject fields",
            &[
                (
                    "csi.cert-manager.io/organizations",
                    "Example, ${POD_NAMESPACE}",
                ),
                ("csi.cert-manager.io/organizationalunits", "web"),
                ("csi.cert-manager.io/countries", "GB,FR"),
                ("csi.cert-manager.io/provinces", "Kent"),
                ("csi.cert-manager.io/localities", "Dover"),
                ("csi.cert-manager.io/streetaddresses", "1 High St"),
                ("csi.cert-manager.io/postalcodes", "CT16"),
                ("csi.cert-manager.io/serialnumber", "${POD_UID}"),
            ],
            |r| {
                let s = &r.subject;
                assert_eq!(s.organizations, ["Example", "shop"]);
                assert_eq!(s.organizational_units, ["web"]);
                assert_eq!(s.countries, ["GB", "FR"]);
                assert_eq!(s.provinces, ["Kent"]);
                assert_eq!(s.localities, ["Dover"]);
                assert_eq!(s.street_addresses, ["1 High St"]);
                assert_eq!(s.postal_codes, ["CT16"]);
                assert_eq!(s.serial_number.as_deref(), Some("0b5c-11"));
            },
        ),
        (
            "brace-less variable, literal dollars",
            &[("csi.cert-manager.io/common-name", "$POD_NAME costs $5 $")],
            |r| assert_eq!(r.subject.common_name.as_deref(), Some("web-0 costs $5 $")),
        ),
        (
            "renew-before",
            &[("csi.cert-manager.io/renew-before", "720h")],
            |r| assert_eq!(r.renew_before, Some(Duration::from_secs(720 * 3600))),
        ),
        (
            "renew-before under a custom duration",
            &[
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "59m"),
            ],
            |r| assert_eq!(r.renew_before, Some(Duration::from_secs(59 * 60))),
        ),
        (
            "reuse-private-key",
            &[("csi.cert-manager.io/reuse-private-key", "true")],
            |r| assert!(r.reuse_private_key),
        ),
        (
            "file names",
            &[
                ("csi.cert-manager.io/ca-file", "root.pem"),
                ("csi.cert-manager.io/certificate-file", "cert.pem"),
                ("csi.certvol.io/privatekey-file", ".key.pem"),
            ],
            |r| {
                assert_eq!(
                    r.files,
                    FileNames {
                        ca: "root.pem".into(),
                        certificate: "cert.pem".into(),
                        private_key: ".key.pem".into(),
                        ..FileNames::default()
                    }
                )
            },
        ),
        (
            "file names may swap defaults",
            &[
                ("csi.cert-manager.io/ca-file", "tls.crt"),
                ("csi.cert-manager.io/certificate-file", "ca.crt"),
            ],
            |r| {
                assert_eq!(
                    (r.files.ca.as_str(), r.files.certificate.as_str()),
                    ("tls.crt", "ca.crt")
                )
            },
        ),
        (
            "fs-group 0",
            &[("csi.cert-manager.io/fs-group", "0")],
            |r| assert_eq!(r.fs_group, Some(0)),
        ),
        (
            "fs-group max",
            &[("csi.cert-manager.io/fs-group", "4294967294")],
            |r| assert_eq!(r.fs_group, Some(4_294_967_294)),
        ),
        ("renew false", &[("csi.certvol.io/renew", "false")], |r| {
            assert!(!r.renew)
        }),
        ("renew true", &[("csi.certvol.io/renew", "true")], |r| {
            assert!(r.renew)
        }),
        (
            "pkcs12-enable false asks for nothing",
            &[("csi.cert-manager.io/pkcs12-enable", "false")],
            |r| {
                assert!(r.annotations.is_empty());
                assert_eq!(r.files.pkcs12, None);
            },
        ),
        (
            "keystore-pkcs12-enable false asks for nothing",
            &[("csi.cert-manager.io/keystore-pkcs12-enable", "false")],
            |r| assert_eq!(r.files.pkcs12, None),
        ),
        (
            "pkcs12-enable defaults: keystore.p12, modern, Secret key pkcs12-password",
            &[("csi.cert-manager.io/pkcs12-enable", "true")],
            |r| {
                assert_eq!(
                    r.files.pkcs12,
                    Some(Pkcs12Files {
                        keystore: Some("keystore.p12".into()),
                        truststore: None,
                        profile: Pkcs12Profile::Modern,
                        password: PasswordSource {
                            secret_key: "pkcs12-password".into(),
                            secret_key_attribute: None,
                            literal_attribute: None,
                        },
                    })
                );
                assert_eq!(
                    r.files.all(),
                    ["ca.crt", "tls.crt", "tls.key", "keystore.p12"]
                );
            },
        ),
        (
            "cert-manager keystore keys verbatim, literal password",
            &[
                ("csi.cert-manager.io/pkcs12-enable", "true"),
                ("csi.cert-manager.io/pkcs12-filename", "crt.p12"),
                ("csi.cert-manager.io/pkcs12-password", "my-password"),
            ],
            |r| {
                let p = r.files.pkcs12.as_ref().unwrap();
                assert_eq!(p.keystore.as_deref(), Some("crt.p12"));
                assert_eq!(
                    p.password.literal_attribute.as_deref(),
                    Some("csi.cert-manager.io/pkcs12-password")
                );
                // The request holds where the password is, never the password.
                assert!(!format!("{r:?}").contains("my-password"));
            },
        ),
        (
            "keystore and truststore under our prefix, legacy, own Secret key",
            &[
                ("csi.certvol.io/pkcs12-enable", "true"),
                ("csi.certvol.io/pkcs12-filename", "app.p12"),
                ("csi.certvol.io/truststore-pkcs12-file", "trust.p12"),
                ("csi.certvol.io/pkcs12-profile", "legacy"),
                ("csi.certvol.io/pkcs12-password-key", "keystore.pass_1"),
            ],
            |r| {
                let p = r.files.pkcs12.as_ref().unwrap();
                assert_eq!(p.keystore.as_deref(), Some("app.p12"));
                assert_eq!(p.truststore.as_deref(), Some("trust.p12"));
                assert_eq!(p.profile, Pkcs12Profile::Legacy);
                assert_eq!(p.password.secret_key, "keystore.pass_1");
                assert_eq!(
                    p.password.secret_key_attribute.as_deref(),
                    Some("csi.certvol.io/pkcs12-password-key")
                );
            },
        ),
        (
            "truststore alone, modern profile explicitly",
            &[
                ("csi.certvol.io/truststore-pkcs12-file", "cacerts.p12"),
                ("csi.certvol.io/pkcs12-profile", "modern"),
            ],
            |r| {
                let p = r.files.pkcs12.as_ref().unwrap();
                assert_eq!(
                    (p.keystore.as_deref(), p.truststore.as_deref()),
                    (None, Some("cacerts.p12"))
                );
                assert_eq!(p.profile, Pkcs12Profile::Modern);
            },
        ),
        (
            "key-chain-file and chain-file",
            &[
                ("csi.certvol.io/key-chain-file", "tls-combined.pem"),
                ("csi.certvol.io/chain-file", "intermediates.pem"),
            ],
            |r| {
                assert_eq!(r.files.key_chain.as_deref(), Some("tls-combined.pem"));
                assert_eq!(r.files.chain.as_deref(), Some("intermediates.pem"));
                assert_eq!(r.files.pkcs12, None);
            },
        ),
        (
            "SANs alone are enough",
            &[
                ("csi.cert-manager.io/common-name", ""),
                ("csi.cert-manager.io/ip-sans", "10.0.0.1"),
            ],
            |r| {
                assert_eq!(r.subject.common_name, None);
                assert_eq!(r.sans.ip_addresses.len(), 1);
            },
        ),
        ("no trust attribute: no bundle", &[], |r| {
            assert_eq!(r.trust, None)
        }),
        (
            "explicit false values alone ask for no bundle",
            &[
                ("csi.certvol.io/trust-issuer-ca", "false"),
                ("csi.certvol.io/trust-public-roots", "false"),
            ],
            |r| assert_eq!(r.trust, None),
        ),
        (
            "a ConfigMap source: default file name, issuing CA included",
            &[(
                "csi.certvol.io/trust-configmaps",
                "ca/ca.crt, certvol/roots/all.pem,ca/ca.crt",
            )],
            |r| {
                let t = r.trust.as_ref().unwrap();
                assert_eq!(r.files.trust_bundle.as_deref(), Some("ca-bundle.crt"));
                assert!(t.issuer_ca);
                assert!(!t.public_roots);
                let refs: Vec<(Option<&str>, &str, &str)> = t
                    .config_maps
                    .iter()
                    .map(|k| (k.namespace.as_deref(), k.name.as_str(), k.key.as_str()))
                    .collect();
                assert_eq!(
                    refs,
                    vec![
                        (None, "ca", "ca.crt"),
                        (Some("certvol"), "roots", "all.pem")
                    ]
                );
                assert_eq!(t.config_maps_attribute, "csi.certvol.io/trust-configmaps");
            },
        ),
        (
            "every source kind and a chosen file",
            &[
                ("csi.certvol.io/trust-bundle-file", "trust.pem"),
                ("csi.certvol.io/trust-issuer-ca", "false"),
                ("csi.certvol.io/trust-secrets", "s/ca.crt"),
                (
                    "csi.certvol.io/trust-cluster-bundles",
                    "example.com:foo:v1,plain",
                ),
                ("csi.certvol.io/trust-signer-name", "example.com/foo"),
                ("csi.certvol.io/trust-signer-labels", "env=prod, team=web"),
                ("csi.certvol.io/trust-public-roots", "true"),
            ],
            |r| {
                let t = r.trust.as_ref().unwrap();
                assert_eq!(r.files.trust_bundle.as_deref(), Some("trust.pem"));
                assert!(!t.issuer_ca);
                assert!(t.public_roots);
                assert_eq!(t.secrets[0].name, "s");
                assert_eq!(t.cluster_bundles, vec!["example.com:foo:v1", "plain"]);
                let s = t.signer.as_ref().unwrap();
                assert_eq!(s.signer_name, "example.com/foo");
                assert_eq!(s.label_selector(), "env=prod,team=web");
            },
        ),
        (
            "public roots alone",
            &[("csi.certvol.io/trust-public-roots", "true")],
            |r| {
                let t = r.trust.as_ref().unwrap();
                assert!(t.public_roots && t.issuer_ca);
                assert!(t.config_maps.is_empty());
            },
        ),
    ];
    for (name, extra, check) in rows {
        let mut extra = extra.to_vec();
        extra.extend(POD);
        let req = match parse(&with(&extra)) {
            Ok(r) => r,
            Err(e) => panic!("row {name:?}: unexpected error: {e}"),
        };
        check(&req);
    }
}

/// Errors, one row per variant and validation rule: full context → attribute in the error
/// and a fragment of its message.
#[test]
fn error_table() {
    let long_label = format!("{}.example", "a".repeat(64));
    let long_name = ["abcdefghi"; 26].join(".");
    let long_file = "f".repeat(256);
    let rows: Vec<ErrorRow> = vec![
        // Missing
        (
            vec![("csi.cert-manager.io/issuer-name", "")],
            "csi.cert-manager.io/issuer-name",
            "is required: it names the cert-manager issuer",
        ),
        // UnknownKey
        (
            vec![("csi.certvol.io/isuer-name", "ca")],
            "csi.certvol.io/isuer-name",
            "is not a known attribute (did you mean \"csi.certvol.io/issuer-name\"?)",
        ),
        (
            vec![("csi.cert-manager.io/organisation", "x")],
            "csi.cert-manager.io/organisation",
            "accepted keys under \"csi.cert-manager.io/\": issuer-name, issuer-kind",
        ),
        (
            vec![("csi.cert-manager.io/dns-names-x", "")],
            "csi.cert-manager.io/dns-names-x",
            "is not a known attribute (did you mean \"csi.cert-manager.io/dns-names\"?)",
        ),
        // Kubernetes CSR API keys
        (
            vec![("csi.certvol.io/signer-name", "example.com")],
            "csi.certvol.io/signer-name",
            "value \"example.com\" is not of the form DOMAIN/PATH; accepted: a signer name of the form \"example.com/signer-name\"",
        ),
        (
            vec![("csi.certvol.io/signer-name", "Example.com/x")],
            "csi.certvol.io/signer-name",
            "has a domain part that is not a fully qualified DNS name",
        ),
        (
            vec![("csi.certvol.io/signer-name", "localhost/x")],
            "csi.certvol.io/signer-name",
            "has a domain part that is not a fully qualified DNS name",
        ),
        (
            vec![("csi.certvol.io/signer-name", "example.com/a b")],
            "csi.certvol.io/signer-name",
            "has a path part that is not letters, digits, '-', '_' and '.'",
        ),
        (
            vec![
                ("csi.certvol.io/signer-name", "example.com/x"),
                ("csi.certvol.io/ca-source", "configmap:corp-ca"),
            ],
            "csi.certvol.io/ca-source",
            "value \"configmap:corp-ca\" needs NAME/KEY after the colon; accepted: \"clustertrustbundle-signer\" (the default)",
        ),
        (
            vec![
                ("csi.certvol.io/signer-name", "example.com/x"),
                ("csi.certvol.io/ca-source", "secret:Bad_Name/ca.crt"),
            ],
            "csi.certvol.io/ca-source",
            "names an invalid object name or key",
        ),
        (
            vec![
                ("csi.certvol.io/signer-name", "example.com/x"),
                ("csi.certvol.io/ca-source", "vault:pki"),
            ],
            "csi.certvol.io/ca-source",
            "is not a known CA source; accepted: \"clustertrustbundle-signer\"",
        ),
        (
            vec![("csi.certvol.io/ca-source", "configmap:corp-ca/ca.crt")],
            "csi.certvol.io/signer-name",
            "is required: \"csi.certvol.io/ca-source\" only applies to Kubernetes CSR API volumes",
        ),
        (
            vec![("csi.cert-manager.io/signer-name", "example.com/x")],
            "csi.cert-manager.io/signer-name",
            "is a certvol extension; write it as \"csi.certvol.io/signer-name\"",
        ),
        // WrongPrefix
        (
            vec![("csi.cert-manager.io/renew", "false")],
            "csi.cert-manager.io/renew",
            "is a certvol extension; write it as \"csi.certvol.io/renew\"",
        ),
        // NotSupported
        (
            vec![("csi.cert-manager.io/keystore-pkcs12-file", "ks.p12")],
            "csi.cert-manager.io/keystore-pkcs12-file",
            "is not supported by certvol: csi-driver spells it \"pkcs12-filename\"; write \
             \"csi.cert-manager.io/pkcs12-filename\"",
        ),
        (
            vec![("csi.certvol.io/keystore-pkcs12-enable", "true")],
            "csi.certvol.io/keystore-pkcs12-enable",
            "write \"csi.cert-manager.io/pkcs12-enable\"",
        ),
        (
            vec![("csi.cert-manager.io/keystore-pkcs12-password", "x")],
            "csi.cert-manager.io/keystore-pkcs12-password",
            "\"csi.certvol.io/pkcs12-password-key\"",
        ),
        // WrongPrefix: our keystore extensions
        (
            vec![("csi.cert-manager.io/pkcs12-profile", "legacy")],
            "csi.cert-manager.io/pkcs12-profile",
            "write it as \"csi.certvol.io/pkcs12-profile\"",
        ),
        (
            vec![("csi.cert-manager.io/pkcs12-password-key", "pw")],
            "csi.cert-manager.io/pkcs12-password-key",
            "write it as \"csi.certvol.io/pkcs12-password-key\"",
        ),
        (
            vec![("csi.cert-manager.io/truststore-pkcs12-file", "t.p12")],
            "csi.cert-manager.io/truststore-pkcs12-file",
            "write it as \"csi.certvol.io/truststore-pkcs12-file\"",
        ),
        (
            vec![("csi.cert-manager.io/key-chain-file", "k.pem")],
            "csi.cert-manager.io/key-chain-file",
            "write it as \"csi.certvol.io/key-chain-file\"",
        ),
        (
            vec![("csi.cert-manager.io/chain-file", "c.pem")],
            "csi.cert-manager.io/chain-file",
            "write it as \"csi.certvol.io/chain-file\"",
        ),
        // Invalid: PKCS#12 values
        (
            vec![("csi.cert-manager.io/pkcs12-enable", "yes")],
            "csi.cert-manager.io/pkcs12-enable",
            "value \"yes\" is not a boolean; accepted: \"true\" or \"false\"",
        ),
        (
            vec![
                ("csi.certvol.io/pkcs12-enable", "true"),
                ("csi.certvol.io/pkcs12-profile", "aes"),
            ],
            "csi.certvol.io/pkcs12-profile",
            "value \"aes\" is not a PKCS#12 profile; accepted: \"modern\"",
        ),
        (
            vec![
                ("csi.certvol.io/pkcs12-enable", "true"),
                ("csi.certvol.io/pkcs12-password-key", "pass word"),
            ],
            "csi.certvol.io/pkcs12-password-key",
            "contains a character other than letters, digits, '-', '_' and '.'; accepted: a \
             Secret data key",
        ),
        (
            vec![
                ("csi.cert-manager.io/pkcs12-enable", "true"),
                ("csi.cert-manager.io/pkcs12-filename", "../ks.p12"),
            ],
            "csi.cert-manager.io/pkcs12-filename",
            "contains '/'; accepted: a plain file name",
        ),
        (
            vec![("csi.certvol.io/truststore-pkcs12-file", "..trust.p12")],
            "csi.certvol.io/truststore-pkcs12-file",
            "starts with \"..\"",
        ),
        (
            vec![("csi.certvol.io/key-chain-file", "a/b.pem")],
            "csi.certvol.io/key-chain-file",
            "contains '/'",
        ),
        (
            vec![("csi.certvol.io/chain-file", " chain.pem")],
            "csi.certvol.io/chain-file",
            "has leading or trailing spaces",
        ),
        // Requires: keystore settings without a keystore
        (
            vec![("csi.cert-manager.io/pkcs12-filename", "ks.p12")],
            "csi.cert-manager.io/pkcs12-filename",
            "has no effect without \"csi.cert-manager.io/pkcs12-enable\" set to \"true\"",
        ),
        (
            vec![
                ("csi.certvol.io/pkcs12-enable", "false"),
                ("csi.certvol.io/pkcs12-filename", "ks.p12"),
            ],
            "csi.certvol.io/pkcs12-filename",
            "has no effect without \"csi.certvol.io/pkcs12-enable\" set to \"true\"",
        ),
        (
            vec![("csi.cert-manager.io/pkcs12-password", "hunter2")],
            "csi.cert-manager.io/pkcs12-password",
            "has no effect without a PKCS#12 file (\"csi.cert-manager.io/pkcs12-enable\" set \
             to \"true\", or \"csi.certvol.io/truststore-pkcs12-file\")",
        ),
        (
            vec![("csi.certvol.io/pkcs12-profile", "legacy")],
            "csi.certvol.io/pkcs12-profile",
            "has no effect without a PKCS#12 file",
        ),
        (
            vec![("csi.certvol.io/pkcs12-password-key", "pw")],
            "csi.certvol.io/pkcs12-password-key",
            "has no effect without a PKCS#12 file",
        ),
        // DuplicateFileName across every file of the volume
        (
            vec![("csi.certvol.io/key-chain-file", "tls.key")],
            "csi.certvol.io/key-chain-file",
            "file name \"tls.key\" is also used by \"csi.cert-manager.io/privatekey-file\" \
             (its default); every file in the volume needs a distinct name",
        ),
        (
            vec![
                ("csi.certvol.io/key-chain-file", "x.pem"),
                ("csi.certvol.io/chain-file", "x.pem"),
            ],
            "csi.certvol.io/chain-file",
            "is also used by \"csi.certvol.io/key-chain-file\";",
        ),
        (
            vec![
                ("csi.cert-manager.io/pkcs12-enable", "true"),
                ("csi.certvol.io/chain-file", "keystore.p12"),
            ],
            "csi.certvol.io/chain-file",
            "is also used by \"csi.cert-manager.io/pkcs12-filename\" (its default)",
        ),
        (
            vec![
                ("csi.certvol.io/pkcs12-enable", "true"),
                ("csi.certvol.io/pkcs12-filename", "store.p12"),
                ("csi.certvol.io/truststore-pkcs12-file", "store.p12"),
            ],
            "csi.certvol.io/truststore-pkcs12-file",
            "is also used by \"csi.certvol.io/pkcs12-filename\";",
        ),
        (
            vec![("csi.certvol.io/truststore-pkcs12-file", "ca.crt")],
            "csi.certvol.io/truststore-pkcs12-file",
            "is also used by \"csi.cert-manager.io/ca-file\" (its default)",
        ),
        (
            vec![("csi.cert-manager.io/disable-auto-renew", "true")],
            "csi.cert-manager.io/disable-auto-renew",
            "set \"csi.certvol.io/renew\" to \"false\"",
        ),
        // InvalidEntry: dns-names
        (
            vec![("csi.cert-manager.io/dns-names", "ok.example, a..b")],
            "csi.cert-manager.io/dns-names",
            "entry \"a..b\" has an empty label",
        ),
        (
            vec![("csi.certvol.io/dns-names", "-a.example")],
            "csi.certvol.io/dns-names",
            "starts or ends with '-'",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", "a_b.example")],
            "csi.cert-manager.io/dns-names",
            "contains a character other than",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", "a.*.example")],
            "csi.cert-manager.io/dns-names",
            "has a '*' that is not a whole leftmost",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", "example.")],
            "csi.cert-manager.io/dns-names",
            "has an empty label",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", &long_label)],
            "csi.cert-manager.io/dns-names",
            "has a label longer than 63 characters",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", &long_name)],
            "csi.cert-manager.io/dns-names",
            "is longer than 253 characters",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", "${POD_NAME}_x")],
            "csi.cert-manager.io/dns-names",
            "entry \"web-0_x\"",
        ),
        // InvalidEntry: ip-sans, uri-sans
        (
            vec![("csi.cert-manager.io/ip-sans", "10.0.0.1, 10.0.0.300")],
            "csi.cert-manager.io/ip-sans",
            "entry \"10.0.0.300\" is not an IP address; accepted: IPv4 or IPv6",
        ),
        (
            vec![("csi.cert-manager.io/uri-sans", "no-scheme")],
            "csi.cert-manager.io/uri-sans",
            "entry \"no-scheme\" has no scheme",
        ),
        (
            vec![("csi.cert-manager.io/uri-sans", "1http://x")],
            "csi.cert-manager.io/uri-sans",
            "has no valid scheme",
        ),
        (
            vec![("csi.cert-manager.io/uri-sans", "urn:")],
            "csi.cert-manager.io/uri-sans",
            "has nothing after the scheme",
        ),
        (
            vec![("csi.cert-manager.io/uri-sans", "http://a b")],
            "csi.cert-manager.io/uri-sans",
            "contains whitespace",
        ),
        // Invalid: durations
        (
            vec![("csi.cert-manager.io/duration", "0")],
            "csi.cert-manager.io/duration",
            "value \"0\" is not a positive duration",
        ),
        (
            vec![("csi.cert-manager.io/duration", "0s")],
            "csi.cert-manager.io/duration",
            "is not a positive duration",
        ),
        (
            vec![("csi.cert-manager.io/duration", "90d")],
            "csi.cert-manager.io/duration",
            "value \"90d\" is not a valid duration; accepted: a Go duration",
        ),
        (
            vec![("csi.cert-manager.io/duration", "1")],
            "csi.cert-manager.io/duration",
            "is not a valid duration",
        ),
        (
            vec![("csi.cert-manager.io/duration", "h")],
            "csi.cert-manager.io/duration",
            "is not a valid duration",
        ),
        (
            vec![("csi.cert-manager.io/duration", "3000000h")],
            "csi.cert-manager.io/duration",
            "is longer than the maximum of 2562047h",
        ),
        (
            vec![("csi.cert-manager.io/renew-before", "2160h")],
            "csi.cert-manager.io/renew-before",
            "is not shorter than the certificate duration \"2160h\" (the default)",
        ),
        (
            vec![
                ("csi.cert-manager.io/duration", "1h"),
                ("csi.cert-manager.io/renew-before", "2h"),
            ],
            "csi.cert-manager.io/renew-before",
            "duration \"1h\"",
        ),
        (
            vec![("csi.cert-manager.io/renew-before", "-5m")],
            "csi.cert-manager.io/renew-before",
            "is not a positive duration",
        ),
        // Invalid: booleans
        (
            vec![("csi.cert-manager.io/is-ca", "yes")],
            "csi.cert-manager.io/is-ca",
            "value \"yes\" is not a boolean; accepted: \"true\" or \"false\"",
        ),
        (
            vec![("csi.cert-manager.io/is-ca", "True")],
            "csi.cert-manager.io/is-ca",
            "is not a boolean",
        ),
        (
            vec![("csi.cert-manager.io/reuse-private-key", "1")],
            "csi.cert-manager.io/reuse-private-key",
            "is not a boolean",
        ),
        (
            vec![("csi.certvol.io/renew", "maybe")],
            "csi.certvol.io/renew",
            "is not a boolean",
        ),
        // key usages
        (
            vec![("csi.cert-manager.io/key-usages", "server auth, foo")],
            "csi.cert-manager.io/key-usages",
            "entry \"foo\" is not a key usage; accepted: \"signing\", \"digital signature\"",
        ),
        (
            vec![("csi.cert-manager.io/key-usages", "Server Auth")],
            "csi.cert-manager.io/key-usages",
            "entry \"Server Auth\" is not a key usage",
        ),
        (
            vec![("csi.cert-manager.io/key-usages", " , ")],
            "csi.cert-manager.io/key-usages",
            "lists no key usage",
        ),
        // key algorithm, size, encoding
        (
            vec![("csi.cert-manager.io/key-algorithm", "DSA")],
            "csi.cert-manager.io/key-algorithm",
            "value \"DSA\" is not a key algorithm; accepted: \"RSA\", \"ECDSA\" or \"Ed25519\"",
        ),
        (
            vec![("csi.cert-manager.io/key-size", "1024")],
            "csi.cert-manager.io/key-size",
            "is not a supported RSA key size; accepted: 2048 (default), 3072 or 4096 (key-algorithm defaults to RSA",
        ),
        (
            vec![
                ("csi.cert-manager.io/key-algorithm", "ECDSA"),
                ("csi.cert-manager.io/key-size", "521"),
            ],
            "csi.cert-manager.io/key-size",
            "is not supported yet: certvol has no P-521 keys",
        ),
        (
            vec![
                ("csi.certvol.io/issuer-name", "ca"),
                ("csi.certvol.io/key-size", "4096"),
            ],
            "csi.certvol.io/key-size",
            "key-algorithm defaults to ECDSA for volumes whose issuer-name is under \"csi.certvol.io/\"",
        ),
        (
            vec![
                ("csi.cert-manager.io/key-algorithm", "ed25519"),
                ("csi.cert-manager.io/key-size", "256"),
            ],
            "csi.cert-manager.io/key-size",
            "Ed25519 keys have a fixed size",
        ),
        (
            vec![("csi.cert-manager.io/key-encoding", "PKCS12")],
            "csi.cert-manager.io/key-encoding",
            "is not a key encoding; accepted: \"PKCS1\" or \"PKCS8\"",
        ),
        (
            vec![
                ("csi.cert-manager.io/key-algorithm", "Ed25519"),
                ("csi.cert-manager.io/key-encoding", "pkcs1"),
            ],
            "csi.cert-manager.io/key-encoding",
            "cannot be used with Ed25519 keys",
        ),
        // literal-subject
        (
            vec![("csi.cert-manager.io/literal-subject", "CN=x")],
            "csi.cert-manager.io/literal-subject",
            "cannot be combined with \"csi.cert-manager.io/common-name\"",
        ),
        (
            vec![
                ("csi.cert-manager.io/common-name", ""),
                ("csi.certvol.io/literal-subject", "CN=x"),
                ("csi.cert-manager.io/serialnumber", "1"),
            ],
            "csi.certvol.io/literal-subject",
            "cannot be combined with \"csi.cert-manager.io/serialnumber\"",
        ),
        (
            vec![
                ("csi.cert-manager.io/common-name", ""),
                ("csi.cert-manager.io/literal-subject", "app"),
            ],
            "csi.cert-manager.io/literal-subject",
            "has a component without \"type=value\"",
        ),
        (
            vec![
                ("csi.cert-manager.io/common-name", ""),
                ("csi.cert-manager.io/literal-subject", "CN=a,\\"),
            ],
            "csi.cert-manager.io/literal-subject",
            "lone backslash",
        ),
        (
            vec![
                ("csi.cert-manager.io/common-name", ""),
                ("csi.cert-manager.io/literal-subject", "C N=a"),
            ],
            "csi.cert-manager.io/literal-subject",
            "neither a keyword",
        ),
        // variables
        (
            vec![(
                "csi.cert-manager.io/common-name",
                "${POD_NAME}-${NODE_NAME}",
            )],
            "csi.cert-manager.io/common-name",
            "unknown variable \"${NODE_NAME}\"; known variables: ${POD_NAME}, ${POD_NAMESPACE}, \
          ${POD_UID}, ${SERVICE_ACCOUNT_NAME}",
        ),
        (
            vec![("csi.certvol.io/uri-sans", "spiffe://x/$NODE")],
            "csi.certvol.io/uri-sans",
            "unknown variable \"$NODE\"",
        ),
        (
            vec![("csi.cert-manager.io/common-name", "${}")],
            "csi.cert-manager.io/common-name",
            "unknown variable \"${}\"",
        ),
        (
            vec![("csi.cert-manager.io/dns-names", "${POD_NAME.example")],
            "csi.cert-manager.io/dns-names",
            "has a \"${\" without a closing \"}\"",
        ),
        // Invalid: file names
        (
            vec![("csi.cert-manager.io/ca-file", "../ca.crt")],
            "csi.cert-manager.io/ca-file",
            "contains '/'",
        ),
        (
            vec![("csi.cert-manager.io/certificate-file", "..data")],
            "csi.cert-manager.io/certificate-file",
            "starts with \"..\"",
        ),
        (
            vec![("csi.cert-manager.io/privatekey-file", "..")],
            "csi.cert-manager.io/privatekey-file",
            "starts with \"..\"",
        ),
        (
            vec![("csi.cert-manager.io/privatekey-file", ".")],
            "csi.cert-manager.io/privatekey-file",
            "is \".\"",
        ),
        (
            vec![("csi.cert-manager.io/ca-file", " ca.crt")],
            "csi.cert-manager.io/ca-file",
            "leading or trailing spaces",
        ),
        (
            vec![("csi.cert-manager.io/ca-file", "a\0b")],
            "csi.cert-manager.io/ca-file",
            "NUL",
        ),
        (
            vec![("csi.cert-manager.io/ca-file", &long_file)],
            "csi.cert-manager.io/ca-file",
            "longer than 255 bytes",
        ),
        // DuplicateFileName
        (
            vec![("csi.cert-manager.io/certificate-file", "ca.crt")],
            "csi.cert-manager.io/certificate-file",
            "file name \"ca.crt\" is also used by \"csi.cert-manager.io/ca-file\" (its default)",
        ),
        (
            vec![("csi.certvol.io/ca-file", "tls.key")],
            "csi.certvol.io/ca-file",
            "is also used by \"csi.cert-manager.io/privatekey-file\" (its default)",
        ),
        (
            vec![
                ("csi.cert-manager.io/ca-file", "x.pem"),
                ("csi.cert-manager.io/privatekey-file", "x.pem"),
            ],
            "csi.cert-manager.io/privatekey-file",
            "is also used by \"csi.cert-manager.io/ca-file\";",
        ),
        // Invalid: fs-group
        (
            vec![("csi.cert-manager.io/fs-group", "-1")],
            "csi.cert-manager.io/fs-group",
            "value \"-1\" is not a decimal group id; accepted: a decimal group id from 0 to 4294967294",
        ),
        (
            vec![("csi.cert-manager.io/fs-group", "+5")],
            "csi.cert-manager.io/fs-group",
            "not a decimal group id",
        ),
        (
            vec![("csi.cert-manager.io/fs-group", " 5")],
            "csi.cert-manager.io/fs-group",
            "not a decimal group id",
        ),
        (
            vec![("csi.cert-manager.io/fs-group", "4294967295")],
            "csi.cert-manager.io/fs-group",
            "is reserved",
        ),
        (
            vec![("csi.cert-manager.io/fs-group", "4294967296")],
            "csi.cert-manager.io/fs-group",
            "is out of range",
        ),
        // NothingRequested
        (
            vec![("csi.cert-manager.io/common-name", "")],
            "csi.cert-manager.io/common-name",
            "without any identity: set \"csi.cert-manager.io/common-name\" or at least one of \
          \"csi.cert-manager.io/dns-names\"",
        ),
        (
            vec![
                ("csi.cert-manager.io/common-name", "  "),
                ("csi.cert-manager.io/dns-names", " , "),
            ],
            "csi.cert-manager.io/common-name",
            "without any identity",
        ),
        (
            vec![
                ("csi.cert-manager.io/common-name", ""),
                ("csi.certvol.io/issuer-name", "ca"),
            ],
            "csi.certvol.io/common-name",
            "\"csi.certvol.io/uri-sans\"",
        ),
        // trust-*
        (
            vec![("csi.cert-manager.io/trust-configmaps", "ca/ca.crt")],
            "csi.cert-manager.io/trust-configmaps",
            "is a certvol extension; write it as \"csi.certvol.io/trust-configmaps\"",
        ),
        (
            vec![("csi.certvol.io/trust-configmaps", "ca/ca.crt,just-a-name")],
            "csi.certvol.io/trust-configmaps",
            "entry \"just-a-name\" is not NAME/KEY or NAMESPACE/NAME/KEY; accepted: NAME/KEY (the pod's namespace)",
        ),
        (
            vec![("csi.certvol.io/trust-secrets", "Bad/ca.crt")],
            "csi.certvol.io/trust-secrets",
            "entry \"Bad/ca.crt\" has an object name that is not a DNS subdomain",
        ),
        (
            vec![("csi.certvol.io/trust-secrets", "s/a b")],
            "csi.certvol.io/trust-secrets",
            "has a key that is not a valid data key",
        ),
        (
            vec![("csi.certvol.io/trust-configmaps", " , ")],
            "csi.certvol.io/trust-configmaps",
            "lists no entry",
        ),
        (
            vec![("csi.certvol.io/trust-cluster-bundles", "ok,Not_OK")],
            "csi.certvol.io/trust-cluster-bundles",
            "entry \"Not_OK\" is not a ClusterTrustBundle name",
        ),
        (
            vec![("csi.certvol.io/trust-signer-name", "my-signer")],
            "csi.certvol.io/trust-signer-name",
            "value \"my-signer\" is not of the form DOMAIN/PATH; accepted: a signer name",
        ),
        (
            vec![("csi.certvol.io/trust-signer-labels", "env=prod")],
            "csi.certvol.io/trust-signer-name",
            "is required: \"csi.certvol.io/trust-signer-labels\" only restricts",
        ),
        (
            vec![
                ("csi.certvol.io/trust-signer-name", "example.com/s"),
                ("csi.certvol.io/trust-signer-labels", "env"),
            ],
            "csi.certvol.io/trust-signer-labels",
            "entry \"env\" is not KEY=VALUE",
        ),
        (
            vec![
                ("csi.certvol.io/trust-signer-name", "example.com/s"),
                ("csi.certvol.io/trust-signer-labels", "env=a,env=b"),
            ],
            "csi.certvol.io/trust-signer-labels",
            "sets a label key a second time",
        ),
        (
            vec![("csi.certvol.io/trust-public-roots", "yes")],
            "csi.certvol.io/trust-public-roots",
            "is not a boolean",
        ),
        (
            vec![("csi.certvol.io/trust-issuer-ca", "TRUE")],
            "csi.certvol.io/trust-issuer-ca",
            "is not a boolean",
        ),
        (
            vec![
                ("csi.certvol.io/trust-bundle-file", "b.pem"),
                ("csi.certvol.io/trust-issuer-ca", "false"),
            ],
            "csi.certvol.io/trust-configmaps",
            "asks for a trust bundle (\"csi.certvol.io/trust-bundle-file\" is set) but \"csi.certvol.io/trust-issuer-ca\" is \"false\"",
        ),
        (
            vec![("csi.certvol.io/trust-bundle-file", "../x")],
            "csi.certvol.io/trust-bundle-file",
            "contains '/'",
        ),
        (
            vec![("csi.certvol.io/trust-bundle-file", "ca.crt")],
            "csi.certvol.io/trust-bundle-file",
            "file name \"ca.crt\" is also used by \"csi.cert-manager.io/ca-file\" (its default)",
        ),
        (
            vec![
                ("csi.certvol.io/trust-bundle-file", "all.pem"),
                ("csi.certvol.io/key-chain-file", "all.pem"),
            ],
            "csi.certvol.io/trust-bundle-file",
            "file name \"all.pem\" is also used by \"csi.certvol.io/key-chain-file\"",
        ),
        (
            vec![
                ("csi.certvol.io/trust-public-roots", "true"),
                ("csi.certvol.io/truststore-pkcs12-file", "ca-bundle.crt"),
                ("csi.certvol.io/pkcs12-password-key", "pw"),
            ],
            "csi.certvol.io/trust-bundle-file",
            "file name \"ca-bundle.crt\" is also used by \"csi.certvol.io/truststore-pkcs12-file\"",
        ),
        (
            vec![
                ("csi.certvol.io/trust-public-roots", "true"),
                ("csi.cert-manager.io/certificate-file", "ca-bundle.crt"),
            ],
            "csi.certvol.io/trust-bundle-file",
            "is also used by \"csi.cert-manager.io/certificate-file\"",
        ),
    ];
    for (extra, attribute, fragment) in rows {
        let mut extra = extra.clone();
        extra.extend(POD);
        let err = match parse(&with(&extra)) {
            Ok(req) => panic!("{extra:?} should fail, parsed to {req:?}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert_eq!(err.attribute(), attribute, "{extra:?}: {msg}");
        assert!(
            msg.contains(fragment),
            "{extra:?}:\n  message:  {msg}\n  expected: {fragment}"
        );
        assert!(
            msg.contains(&format!("{attribute:?}")),
            "message must name the attribute: {msg}"
        );
        assert!(!msg.contains("hunter2"), "secret leaked: {msg}");
        assert!(!msg.contains('\n'), "one-line message: {msg}");
    }
}

#[test]
fn duration_message_reads_well() {
    let err = parse(&with(&[("csi.cert-manager.io/duration", "-1h")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume attribute \"csi.cert-manager.io/duration\": value \"-1h\" is not a positive \
         duration; accepted: a Go duration such as \"2160h\", \"90m\" or \"1h30m\""
    );
}

#[test]
fn missing_pod_info_asks_for_pod_info_on_mount() {
    let err = parse(&with(&[("csi.cert-manager.io/common-name", "${POD_NAME}")])).unwrap_err();
    assert_eq!(
        err,
        AttrError::MissingPodInfo {
            attribute: "csi.cert-manager.io/common-name".into(),
            variable: "${POD_NAME}",
            context_key: "csi.storage.k8s.io/pod.name",
        }
    );
    assert!(err.to_string().contains("podInfoOnMount must be enabled"));
    let err = parse(&with(&[
        (
            "csi.cert-manager.io/organizations",
            "${SERVICE_ACCOUNT_NAME}",
        ),
        ("csi.storage.k8s.io/pod.name", "web-0"),
    ]))
    .unwrap_err();
    assert_eq!(err.attribute(), "csi.cert-manager.io/organizations");
    assert!(
        err.to_string()
            .contains("\"csi.storage.k8s.io/serviceAccount.name\"")
    );
}

#[test]
fn first_bad_key_is_reported_deterministically() {
    let c = with(&[("csi.certvol.io/zzz", "1"), ("csi.certvol.io/aaa", "1")]);
    for _ in 0..10 {
        assert_eq!(parse(&c).unwrap_err().attribute(), "csi.certvol.io/aaa");
    }
}

#[test]
fn every_documented_key_is_accepted_under_both_prefixes() {
    for key in &KEYS[..CERT_MANAGER_KEY_COUNT] {
        for prefix in [CM, CV] {
            let k = format!("{prefix}{key}");
            // An empty value means "unset"; that is enough to prove the key is known.
            let c = with(&[(k.as_str(), "")]);
            if let Err(AttrError::UnknownKey { .. }) = parse(&c) {
                panic!("{k} rejected as unknown");
            }
        }
    }
}
