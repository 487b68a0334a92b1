//! The local CA's issuance policy against the real `certvol node --issuer local`: refused
//! requests are PermissionDenied naming the attribute and the rule and leave nothing behind;
//! the operator's flags open exactly what they name; a tightened policy stops renewals while
//! the current certificate stays in place.

use std::time::Duration;

use certvol_driver::demo::kubelet::Pod;
use certvol_e2e::require_root;
use certvol_e2e::{Env, eventually, read_volume, volume};
use tonic::Code;
use x509_parser::prelude::FromDer;

#[tokio::test]
async fn refused_requests_are_permission_denied_naming_the_rule_and_leave_nothing() {
    require_root!();
    let mut env = Env::new();
    let _driver = env.start().await;
    let kubelet = env.kubelet();
    // (attributes, what the message says about the value, the rule it names)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("csi.certvol.io/is-ca", "true")],
            "csi.certvol.io/is-ca: \"true\" is not allowed",
            "--local-allow-ca",
        ),
        (
            &[("csi.certvol.io/key-usages", "digital signature,cert sign")],
            "csi.certvol.io/key-usages: \"cert sign\" is not allowed",
            "--local-allow-ca",
        ),
        (
            &[("csi.certvol.io/dns-names", "api.other-ns.svc")],
            "csi.certvol.io/dns-names: \"api.other-ns.svc\" is not allowed",
            "allows DNS names of namespace \"shop\" (*.shop, *.shop.svc",
        ),
        (
            &[("csi.certvol.io/dns-names", "shop.svc.evil.com")],
            "csi.certvol.io/dns-names: \"shop.svc.evil.com\" is not allowed",
            "--local-allow-dns patterns []",
        ),
        (
            &[(
                "csi.certvol.io/uri-sans",
                "spiffe://cluster.local/ns/kube-system/sa/admin",
            )],
            "csi.certvol.io/uri-sans: \"spiffe://cluster.local/ns/kube-system/sa/admin\" is not allowed",
            "own SPIFFE ID (spiffe://cluster.local/ns/shop/sa/default)",
        ),
        (
            &[("csi.certvol.io/ip-sans", "10.0.0.7")],
            "csi.certvol.io/ip-sans: \"10.0.0.7\" is not allowed",
            "--local-allow-ip-cidr",
        ),
    ];
    for (i, (extra, what, rule)) in cases.iter().enumerate() {
        let pod = Pod::new("shop", &format!("refused-{i}"));
        let vol = volume(extra.iter().copied());
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err}");
        assert!(err.message().contains(what), "{what}: {}", err.message());
        assert!(err.message().contains(rule), "{rule}: {}", err.message());
        assert!(
            !kubelet.target_path(&pod, &vol).exists(),
            "{what}: target left behind"
        );
        assert!(env.state(&pod, &vol).is_none(), "{what}: state left behind");
    }
    env.assert_no_volume_left();
    assert!(env.issued().is_empty(), "nothing was signed");

    // The pod's own names and SPIFFE ID are what the defaults are for.
    let pod = Pod::new("shop", "web-0");
    let vol = volume([
        (
            "csi.certvol.io/dns-names",
            "${POD_NAME}.${POD_NAMESPACE}.svc,web.${POD_NAMESPACE}.svc.cluster.local",
        ),
        ("csi.certvol.io/common-name", "${POD_NAME}.${POD_NAMESPACE}"),
        (
            "csi.certvol.io/uri-sans",
            "spiffe://cluster.local/ns/${POD_NAMESPACE}/sa/${SERVICE_ACCOUNT_NAME}",
        ),
    ]);
    let target = kubelet.publish(&pod, &vol).await.expect("own names");
    let files = read_volume(&target).expect("consistent volume");
    assert_eq!(
        files.leaf.dns_names,
        ["web-0.shop.svc", "web.shop.svc.cluster.local"]
    );
    assert!(!files.leaf.is_ca);
}

#[tokio::test]
async fn operator_flags_allow_a_ca_with_path_length_zero_and_named_patterns() {
    require_root!();
    let mut env = Env::new();
    let _driver = env
        .start_with(
            &[
                "--local-allow-ca",
                "--local-allow-dns",
                "*.example.com",
                "--local-allow-ip-cidr",
                "10.0.0.0/24",
            ],
            &[],
        )
        .await;
    let kubelet = env.kubelet();
    let pod = Pod::new("shop", "issuer-0");
    let vol = volume([
        ("csi.certvol.io/is-ca", "true"),
        ("csi.certvol.io/key-usages", "cert sign,crl sign"),
        ("csi.certvol.io/dns-names", "ca.example.com"),
        ("csi.certvol.io/ip-sans", "10.0.0.7"),
    ]);
    let target = kubelet.publish(&pod, &vol).await.expect("allowed CA");
    let files = read_volume(&target).expect("consistent volume");
    assert!(files.leaf.is_ca);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&files.leaf.der).unwrap();
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical && bc.value.ca);
    assert_eq!(
        bc.value.path_len_constraint,
        Some(0),
        "a volume's CA cannot sign another CA"
    );

    // A pattern allows one label, not any depth, and not other namespaces.
    for (i, name) in ["a.b.example.com", "api.other-ns.svc"].iter().enumerate() {
        let pod = Pod::new("shop", &format!("deep-{i}"));
        let vol = volume([("csi.certvol.io/dns-names", *name)]);
        let err = kubelet.publish(&pod, &vol).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err}");
        assert!(
            err.message()
                .contains("--local-allow-dns patterns [\"*.example.com\"]"),
            "{}",
            err.message()
        );
    }
}

#[tokio::test]
async fn a_tightened_policy_stops_renewal_and_keeps_the_current_certificate() {
    require_root!();
    let mut env = Env::new();
    let mut driver = env
        .start_with(&["--local-allow-dns", "*.example.com"], &[])
        .await;
    let kubelet = env.kubelet();
    let pod = Pod::new("shop", "old-0");
    let vol = volume([
        ("csi.certvol.io/dns-names", "old.example.com"),
        ("csi.certvol.io/duration", "30s"),
    ]);
    let target = kubelet.publish(&pod, &vol).await.expect("publish");
    let first = read_volume(&target).expect("consistent volume");
    driver.terminate(Duration::from_secs(10)).expect("stop");

    // The operator drops the pattern and restarts: renewal is refused and logged.
    let _driver = env.start().await;
    let failed = eventually(Duration::from_secs(40), || {
        let st = env.state(&pod, &vol)?;
        (st.renewal.failures >= 1).then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("no refused renewal\n--- log ---\n{}", env.logs()));
    let error = failed.renewal.last_error.unwrap_or_default();
    assert!(
        error.contains("csi.certvol.io/dns-names: \"old.example.com\" is not allowed"),
        "{error}"
    );
    let during = read_volume(&target).expect("the current pair stays in place");
    assert_eq!(during.leaf.serial_hex, first.leaf.serial_hex);
    let logged = eventually(Duration::from_secs(5), || {
        env.logs()
            .lines()
            .any(|l| l.contains("renewal failed") && l.contains("old.example.com"))
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "--- log ---\n{}", env.logs());
}
