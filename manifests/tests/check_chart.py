#!/usr/bin/env python3
"""Renders the certvol Helm chart with a real Helm engine and checks the objects.

For the default values and each issuer mode it renders the chart (helm-python-sdk bundles Helm
v4 as a library, so no helm binary is needed), validates every object against the Kubernetes
OpenAPI schemas in strict mode (kubernetes-validate: unknown fields are errors), and asserts the
fields a platform engineer relies on: CSIDriver modes, DaemonSet privileges and mounts, RBAC per
issuer mode. It also checks that manifests/certvol.yaml is the default render, and that values
the chart refuses make the render fail.

Usage: check_chart.py [--write-plain]   (--write-plain regenerates manifests/certvol.yaml)
Run by e2e/tests/chart.rs, which installs manifests/tests/requirements.txt into a venv.
"""

import copy
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

MANIFESTS = Path(__file__).resolve().parent.parent
CHART = MANIFESTS / "charts" / "certvol"
PLAIN = MANIFESTS / "certvol.yaml"
RELEASE = "certvol"
NAMESPACE = "certvol"
# Oldest Kubernetes the chart supports (manifests/README.md) and the newest schemas available.
KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
# Objects whose schema is a CRD, not part of Kubernetes: checked by field only.
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}
PLAIN_HEADER = (
    "# certvol {version}: plain manifests rendered from charts/certvol with default values\n"
    "# (release name certvol, namespace certvol). Regenerate after any chart change; see README.md.\n"
    "# Create the namespace first: kubectl create namespace certvol\n"
)
PLAIN_ORDER = ["serviceaccount.yaml", "rbac.yaml", "admissionpolicy.yaml", "csidriver.yaml",
               "daemonset.yaml"]
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# The volume the ServiceAccount admission plugin adds for automount (kube-api-access-<random>).
KUBE_API_ACCESS = {
    "defaultMode": 0o644,
    "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ],
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def render(values):
    chart = helm.Chart.load(str(CHART))
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered):
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def one(objs, kind, case):
    found = by_kind(objs, kind)
    check(len(found) == 1, f"{case}: expected one {kind}, got {len(found)}")
    return found[0] if found else {}


def validate(objs, case):
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                check(False, f"{case}: {obj['kind']} {obj['metadata']['name']} invalid for "
                             f"Kubernetes {version}: {e.message} at {list(e.path)}")


def container(ds, name):
    for c in ds["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    check(False, f"DaemonSet has no container {name}")
    return {"args": [], "volumeMounts": []}


def arg_map(c):
    """--flag=value args as a dict (valueless flags map to True)."""
    out = {}
    for a in c.get("args", []):
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v if v else True
    return out


def check_common(objs, case, issuer):
    kinds = sorted(o["kind"] for o in objs)
    ns_objects = [o for o in objs if o["kind"] in ("ServiceAccount", "DaemonSet")]
    for o in ns_objects:
        check(o["metadata"].get("namespace") == NAMESPACE, f"{case}: {o['kind']} not in {NAMESPACE}")

    drv = one(objs, "CSIDriver", case)
    spec = drv.get("spec", {})
    check(drv.get("metadata", {}).get("name") == "csi.certvol.io", f"{case}: CSIDriver name")
    check(spec.get("attachRequired") is False, f"{case}: attachRequired must be false")
    check(spec.get("podInfoOnMount") is True, f"{case}: podInfoOnMount must be true")
    check(spec.get("volumeLifecycleModes") == ["Ephemeral"], f"{case}: lifecycle modes")
    check(spec.get("fsGroupPolicy") == "File", f"{case}: fsGroupPolicy")

    ds = one(objs, "DaemonSet", case)
    pod = ds["spec"]["template"]["spec"]
    c = container(ds, "certvol")
    args = arg_map(c)
    check(c["args"][0] == "node", f"{case}: certvol runs `node`")
    check(args.get("issuer") == issuer, f"{case}: --issuer={issuer}, got {args.get('issuer')}")
    check(args.get("endpoint") == "unix:///csi/csi.sock", f"{case}: endpoint")
    check(args.get("driver-name") == "csi.certvol.io", f"{case}: driver name arg")
    check(args.get("data-root") == "/var/lib/certvol", f"{case}: data root arg")
    check(args.get("kubelet-dir") == "/var/lib/kubelet", f"{case}: --kubelet-dir")
    check(c["securityContext"].get("privileged") is True, f"{case}: certvol must be privileged")
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "spec.nodeName", f"{case}: NODE_NAME from spec.nodeName")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name, path in [("pods-dir", "/var/lib/kubelet/pods"), ("data-root", "/var/lib/certvol")]:
        m = mounts.get(name, {})
        check(m.get("mountPath") == path, f"{case}: {name} mounted at {path}")
        check(m.get("mountPropagation") == "Bidirectional", f"{case}: {name} Bidirectional")
    vols = {v["name"]: v for v in pod["volumes"]}
    check(vols.get("plugin-dir", {}).get("hostPath", {}).get("path")
          == "/var/lib/kubelet/plugins/csi.certvol.io", f"{case}: socket under kubelet plugins dir")
    check(vols.get("registration-dir", {}).get("hostPath", {}).get("path")
          == "/var/lib/kubelet/plugins_registry", f"{case}: registration dir")
    reg = container(ds, "node-driver-registrar")
    check(arg_map(reg).get("kubelet-registration-path")
          == "/var/lib/kubelet/plugins/csi.certvol.io/csi.sock", f"{case}: registration path")
    lp = container(ds, "liveness-probe")
    check(arg_map(lp).get("csi-address") == "/csi/csi.sock", f"{case}: livenessprobe socket")
    check_token(objs, pod, case, issuer)
    check(pod.get("tolerations") == [{"operator": "Exists"}], f"{case}: tolerate every taint")
    check(pod.get("priorityClassName") == "system-node-critical", f"{case}: priority class")
    check(pod.get("terminationGracePeriodSeconds") == 30, f"{case}: grace 20s + 10s")
    check(args.get("grace-period") == "20s", f"{case}: --grace-period")
    check("forbid-rsa-4096" not in args, f"{case}: RSA 4096 allowed by default")
    check("resources" in c and c["resources"]["limits"]["memory"] == "128Mi", f"{case}: resources")
    check(c["image"] == "ghcr.io/certvol/certvol:0.1.0", f"{case}: image {c['image']}")
    return ds, drv, kinds


def check_token(objs, pod, case, issuer):
    """The API token reaches the certvol container only, and only in API modes."""
    sa = one(objs, "ServiceAccount", case)
    check(sa.get("automountServiceAccountToken") is False, f"{case}: ServiceAccount automount off")
    check(pod.get("automountServiceAccountToken") is False, f"{case}: pod automount off")
    token_vols = {v["name"] for v in pod["volumes"]
                  if any("serviceAccountToken" in src for src in v.get("projected", {}).get("sources", []))}
    mounting = sorted(c["name"] for c in pod["containers"] + pod.get("initContainers", [])
                      for m in c.get("volumeMounts", [])
                      if m["name"] in token_vols or m["mountPath"].startswith(SA_PATH))
    if issuer == "local":
        check(not token_vols and not mounting, f"{case}: no API token in local mode: {mounting}")
        return
    vols = {v["name"]: v for v in pod["volumes"]}
    check(vols.get("kube-api-access", {}).get("projected") == KUBE_API_ACCESS,
          f"{case}: kube-api-access shaped like the automount volume: {vols.get('kube-api-access')}")
    check(token_vols == {"kube-api-access"}, f"{case}: one token volume: {token_vols}")
    check(mounting == ["certvol"], f"{case}: only certvol mounts the token, not {mounting}")
    m = [m for m in container({"spec": {"template": {"spec": pod}}}, "certvol")["volumeMounts"]
         if m["name"] == "kube-api-access"]
    check(m == [{"name": "kube-api-access", "mountPath": SA_PATH, "readOnly": True}],
          f"{case}: token mounted read-only at {SA_PATH}: {m}")


def rules_of(objs):
    role = by_kind(objs, "ClusterRole")
    return {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
            for r in (role[0]["rules"] if role else [])}


def identity_rules(objs):
    """The resourceNames of the ClusterRole's csidrivers rule (None: no such rule), after checking
    that the pod-identity rules grant nothing beyond get on named CSIDrivers and list+watch on
    pods."""
    role = by_kind(objs, "ClusterRole")
    names = None
    for r in role[0]["rules"] if role else []:
        if "csidrivers" in r["resources"]:
            check(r["apiGroups"] == ["storage.k8s.io"] and r["resources"] == ["csidrivers"]
                  and r["verbs"] == ["get"] and r.get("resourceNames"),
                  f"pod identity: get on named CSIDrivers only: {r}")
            names = r["resourceNames"]
        if "pods" in r["resources"]:
            check(r["apiGroups"] == [""] and r["resources"] == ["pods"]
                  and r["verbs"] == ["list", "watch"] and "resourceNames" not in r,
                  f"pod identity: list+watch on pods only: {r}")
    return names


def binding_ok(objs, case):
    b = one(objs, "ClusterRoleBinding", case)
    subj = b.get("subjects", [{}])[0]
    check(subj.get("kind") == "ServiceAccount" and subj.get("name") == RELEASE
          and subj.get("namespace") == NAMESPACE, f"{case}: binding to the driver's ServiceAccount")


def case_default():
    objs = objects(render({}))
    validate(objs, "default")
    ds, drv, kinds = check_common(objs, "default", "cert-manager")
    check(kinds == ["CSIDriver", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount",
                    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"],
          f"default: objects {kinds}")
    check("tokenRequests" not in drv["spec"] and drv["spec"]["requiresRepublish"] is False,
          "default: no tokenRequests, no republish")
    check(rules_of(objs) == {
        (("storage.k8s.io",), ("csidrivers",)): ["get"],
        (("",), ("pods",)): ["list", "watch"],
        (("cert-manager.io",), ("certificaterequests",)): ["create", "delete", "list", "watch"],
        (("",), ("events",)): ["create"],
        # No ConfigMap or Secret anywhere without namespaces (or trust.clusterWide).
        (("certificates.k8s.io",), ("clustertrustbundles",)): ["list", "watch"],
    }, f"default: RBAC {rules_of(objs)}")
    check(not by_kind(objs, "Role"), "default: no Roles")
    check(identity_rules(objs) == ["csi.certvol.io"], "default: get on its own CSIDriver only")
    policy = one(objs, "ValidatingAdmissionPolicy", "default")
    check([r["resources"] for r in policy["spec"]["matchConstraints"]["resourceRules"]]
          == [["certificaterequests"], ["events"]], "default: policy covers requests and events")
    check("trust-namespace" not in arg_map(container(ds, "certvol")), "default: no --trust-namespace")
    certvol_args = arg_map(container(ds, "certvol"))
    check("request-namespaces" not in certvol_args, "default: one cluster-wide request watch")
    check((certvol_args.get("issuance-api-qps"), certvol_args.get("issuance-api-burst"),
           certvol_args.get("max-requests-per-namespace")) == ("10", "20", "512"),
          f"default: the issuance client's budget and the request cache's cap: {certvol_args}")
    binding_ok(objs, "default")
    args = arg_map(container(ds, "certvol"))
    check(args.get("metrics-address") == "0.0.0.0:9402", "default: metrics on 9402")
    c = container(ds, "certvol")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "default: readiness /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "default: liveness /healthz")
    return objs


def case_token_request():
    objs = objects(render({"certManager": {"tokenRequest": True}}))
    validate(objs, "token-request")
    ds, drv, _ = check_common(objs, "token-request", "cert-manager")
    check(drv["spec"].get("tokenRequests") == [{"audience": ""}], "token-request: tokenRequests")
    check(drv["spec"].get("requiresRepublish") is True, "token-request: requiresRepublish")
    check(arg_map(container(ds, "certvol")).get("use-token-request") is True,
          "token-request: --use-token-request")
    # The pod's own token creates requests; the driver keeps only what it does itself.
    check(rules_of(objs)[(("cert-manager.io",), ("certificaterequests",))]
          == ["delete", "list", "watch"], "token-request: no create for the driver")


def case_kubernetes_csr():
    objs = objects(render({"issuer": "kubernetes-csr"}))
    validate(objs, "kubernetes-csr")
    ds, drv, kinds = check_common(objs, "kubernetes-csr", "kubernetes-csr")
    check(kinds == ["CSIDriver", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount",
                    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"],
          f"kubernetes-csr: objects {kinds}")
    check("tokenRequests" not in drv["spec"], "kubernetes-csr: no tokenRequests")
    # Least privilege: no update/patch, no approval subresource, no `approve` on signers.
    check(rules_of(objs) == {
        (("storage.k8s.io",), ("csidrivers",)): ["get"],
        (("",), ("pods",)): ["list", "watch"],
        (("certificates.k8s.io",), ("certificatesigningrequests",)):
            ["create", "delete", "get", "list", "watch"],
        (("certificates.k8s.io",), ("clustertrustbundles",)): ["get", "list", "watch"],
        (("",), ("events",)): ["create"],
    }, f"kubernetes-csr: RBAC {rules_of(objs)}")
    binding_ok(objs, "kubernetes-csr")
    check(identity_rules(objs) == ["csi.certvol.io"], "kubernetes-csr: get on its own CSIDriver")
    args = arg_map(container(ds, "certvol"))
    check(args.get("kube-api-qps") == "10" and args.get("request-history") == "1",
          f"kubernetes-csr: API client args {args}")

    objs = objects(render({"issuer": "kubernetes-csr", "trust": {"configMaps": False},
                           "kubernetesCsr": {"readConfigMaps": True, "readSecrets": True}}))
    validate(objs, "kubernetes-csr+ca-sources")
    rules = rules_of(objs)
    check(rules.get((("",), ("configmaps",))) == ["get"]
          and rules.get((("",), ("secrets",))) == ["get"],
          f"kubernetes-csr+ca-sources: get on configmaps and secrets, got {rules}")

    objs = objects(render({"issuer": "kubernetes-csr", "trust": {"restrictToNamespaces": ["a"]}}))
    validate(objs, "kubernetes-csr+restricted-trust")
    roles = by_kind(objs, "Role")
    check([r["metadata"]["namespace"] for r in roles] == ["a"],
          "kubernetes-csr+restricted-trust: one trust Role in namespace a")
    check((("",), ("configmaps",)) not in rules_of(objs),
          "kubernetes-csr+restricted-trust: no cluster-wide configmaps rule")


def case_local():
    objs = objects(render({"issuer": "local"}))
    validate(objs, "local")
    ds, drv, kinds = check_common(objs, "local", "local")
    check(kinds == ["CSIDriver", "DaemonSet", "ServiceAccount"], f"local: no RBAC, got {kinds}")
    check(arg_map(container(ds, "certvol")).get("local-ca-max-duration") == "8760h",
          "local: max duration")
    args = container(ds, "certvol")["args"]
    check("--cluster-domain=cluster.local" in args and "--trust-domain=cluster.local" in args,
          f"local: policy domains, got {args}")
    check(not any(a.startswith("--local-allow-") for a in args),
          f"local: the policy opens nothing by default, got {args}")

    policy = {"allowCA": True, "allowDNS": ["*.example.com", "**.corp.example"],
              "allowURIs": ["spiffe://corp.example/*"], "allowIPCIDRs": ["10.0.0.0/8"],
              "clusterDomain": "corp.internal", "trustDomain": "corp.example"}
    objs = objects(render({"issuer": "local", "local": {"policy": policy}}))
    validate(objs, "local+policy")
    ds, _, _ = check_common(objs, "local+policy", "local")
    args = container(ds, "certvol")["args"]
    for want in ["--local-allow-ca", "--local-allow-dns=*.example.com",
                 "--local-allow-dns=**.corp.example", "--local-allow-uri=spiffe://corp.example/*",
                 "--local-allow-ip-cidr=10.0.0.0/8", "--cluster-domain=corp.internal",
                 "--trust-domain=corp.example"]:
        check(want in args, f"local+policy: {want} rendered, got {args}")

    objs = objects(render({"issuer": "local", "local": {"caSecretName": "my-ca"}}))
    validate(objs, "local+secret")
    ds, _, _ = check_common(objs, "local+secret", "local")
    c = container(ds, "certvol")
    args = arg_map(c)
    check(args.get("local-ca-cert") == "/etc/certvol/local-ca/tls.crt"
          and args.get("local-ca-key") == "/etc/certvol/local-ca/tls.key", "local+secret: CA args")
    vols = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    check(vols.get("local-ca", {}).get("secret", {}).get("secretName") == "my-ca",
          "local+secret: Secret volume")
    check(vols.get("local-ca", {}).get("secret", {}).get("defaultMode") == 0o400,
          "local+secret: key file mode 0400")


def case_operations():
    values = {
        "metrics": {"enabled": True, "port": 9500,
                    "podMonitor": {"enabled": True, "prometheusInstance": "main"}},
        "daemonSetAnnotations": {"team": "platform"},
        "nodeDriverRegistrarImage": {"registry": "mirror.example.com/"},
        "logLevel": "debug", "logFormat": "json", "extraArgs": ["--renew-concurrency=8"],
        "nodeSelector": {"pool": "edge"}, "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "priorityClassName": "", "gracePeriodSeconds": 45, "imagePullSecrets": [{"name": "reg"}],
        "image": {"digest": "sha256:" + "a" * 64}, "driverName": "certs.example.com",
        "keys": {"forbidRsa4096": True},
    }
    objs = objects(render(values))
    validate(objs, "operations")
    ds = one(objs, "DaemonSet", "operations")
    pod = ds["spec"]["template"]["spec"]
    c = container(ds, "certvol")
    args = arg_map(c)
    check(args.get("log-level") == "debug" and args.get("log-format") == "json", "ops: log flags")
    check(args.get("metrics-address") == "0.0.0.0:9500", "ops: metrics port")
    check(args.get("renew-concurrency") == "8", "ops: extra args appended")
    check(args.get("forbid-rsa-4096") is True, "ops: keys.forbidRsa4096 sets --forbid-rsa-4096")
    check(args.get("driver-name") == "certs.example.com", "ops: driver name arg")
    check(one(objs, "CSIDriver", "ops")["metadata"]["name"] == "certs.example.com", "ops: CSIDriver")
    check(identity_rules(objs) == ["certs.example.com"], "ops: get on its own CSIDriver only")
    # Helm merges maps with the defaults, so the OS selector stays.
    check(pod.get("nodeSelector") == {"kubernetes.io/os": "linux", "pool": "edge"},
          f"ops: node selector {pod.get('nodeSelector')}")
    check(pod.get("tolerations") == [{"key": "dedicated", "operator": "Exists"}], "ops: tolerations")
    check("priorityClassName" not in pod, "ops: empty priority class left out")
    check(pod.get("terminationGracePeriodSeconds") == 55, "ops: grace period + 10")
    check(pod.get("imagePullSecrets") == [{"name": "reg"}], "ops: pull secrets")
    check(c["image"] == "ghcr.io/certvol/certvol@sha256:" + "a" * 64, f"ops: digest {c['image']}")
    check(ds["metadata"].get("annotations") == {"team": "platform"}, "ops: DaemonSet annotations")
    reg = container(ds, "node-driver-registrar")
    check(reg["image"] == "mirror.example.com/registry.k8s.io/sig-storage/csi-node-driver-registrar"
          ":v2.18.0", f"ops: registry prefix {reg['image']}")
    pm = one(objs, "PodMonitor", "ops")
    check(pm["metadata"]["labels"].get("prometheus") == "main", "ops: prometheus instance label")
    check(pm.get("spec", {}).get("podMetricsEndpoints", [{}])[0].get("port") == "metrics",
          "ops: PodMonitor scrapes the metrics port")

    objs = objects(render({"metrics": {"enabled": False}}))
    validate(objs, "metrics-off")
    ds = one(objs, "DaemonSet", "metrics-off")
    c = container(ds, "certvol")
    check(arg_map(c).get("metrics-address") == "off", "metrics-off: --metrics-address=off")
    check("readinessProbe" not in c, "metrics-off: no readiness probe")
    check(c["livenessProbe"]["httpGet"]["port"] == 9809, "metrics-off: liveness via sidecar")


def roles_by_namespace(objs, case):
    """Role name -> (namespace, rules), checking each Role has its RoleBinding to the driver."""
    out = {}
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]): b
                for b in by_kind(objs, "RoleBinding")}
    for role in by_kind(objs, "Role"):
        ns, name = role["metadata"]["namespace"], role["metadata"]["name"]
        b = bindings.get((ns, name), {})
        subj = b.get("subjects", [{}])[0]
        check(b.get("roleRef", {}).get("name") == name and b.get("roleRef", {}).get("kind") == "Role"
              and subj.get("name") == RELEASE and subj.get("namespace") == NAMESPACE,
              f"{case}: RoleBinding for Role {ns}/{name}")
        out[ns] = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
                   for r in role["rules"]}
    check(len(bindings) == len(out), f"{case}: one RoleBinding per Role")
    return out


def case_trust():
    # Secrets on, ClusterTrustBundles off, a shared trust namespace: a Role there only.
    objs = objects(render({"trust": {"secrets": True, "clusterTrustBundles": False,
                                     "namespace": "certvol-trust"}}))
    validate(objs, "trust-secrets")
    ds, _, _ = check_common(objs, "trust-secrets", "cert-manager")
    rules = rules_of(objs)
    check(not any(r[0] == ("",) and ("configmaps" in r[1] or "secrets" in r[1]) for r in rules),
          f"trust-secrets: no cluster-wide configmaps/secrets: {rules}")
    check(not any("clustertrustbundles" in r for _, r in rules), "trust-secrets: no CTB rule")
    check(arg_map(container(ds, "certvol")).get("trust-namespace") == "certvol-trust",
          "trust-secrets: --trust-namespace")
    roles = roles_by_namespace(objs, "trust-secrets")
    check(roles == {"certvol-trust": {(("",), ("configmaps", "secrets")): ["list", "watch"]}},
          f"trust-secrets: one Role in the trust namespace: {roles}")

    # The documented opt-in: cluster-wide list/watch, no Roles.
    objs = objects(render({"trust": {"secrets": True, "clusterWide": True,
                                     "namespace": "certvol-trust"}}))
    validate(objs, "trust-cluster-wide")
    rules = rules_of(objs)
    check(rules.get((("",), ("configmaps", "secrets"))) == ["list", "watch"],
          f"trust-cluster-wide: configmaps+secrets list/watch cluster-wide: {rules}")
    check(not by_kind(objs, "Role"), "trust-cluster-wide: no Roles")

    # Everything off: no trust rules at all.
    objs = objects(render({"trust": {"configMaps": False, "clusterTrustBundles": False,
                                     "namespace": "certvol-trust"}}))
    validate(objs, "trust-off")
    rules = rules_of(objs)
    check(set(rules) == {(("cert-manager.io",), ("certificaterequests",)), (("",), ("events",)),
                         (("storage.k8s.io",), ("csidrivers",)), (("",), ("pods",))},
          f"trust-off: only the issuer's and pod identity's rules: {rules}")
    check(not by_kind(objs, "Role"), "trust-off: no Roles")

    # Restricted: a Role + RoleBinding per namespace (the trust namespace included), and no
    # cluster-wide ConfigMap/Secret rule.
    objs = objects(render({"trust": {"secrets": True, "namespace": "certvol-trust",
                                     "restrictToNamespaces": ["shop", "payments", "shop"]}}))
    validate(objs, "trust-restricted")
    check_common(objs, "trust-restricted", "cert-manager")
    rules = rules_of(objs)
    check(not any(r[0] == ("",) and ("configmaps" in r[1] or "secrets" in r[1]) for r in rules),
          f"trust-restricted: no cluster-wide configmaps/secrets: {rules}")
    check(rules.get((("certificates.k8s.io",), ("clustertrustbundles",))) == ["list", "watch"],
          "trust-restricted: ClusterTrustBundles stay cluster-scoped")
    roles = roles_by_namespace(objs, "trust-restricted")
    check(sorted(roles) == ["certvol-trust", "payments", "shop"], f"trust-restricted: {sorted(roles)}")
    for ns, r in roles.items():
        check(r == {(("",), ("configmaps", "secrets")): ["list", "watch"]},
              f"trust-restricted: Role in {ns}: {r}")

    # resourceNames: only the named objects (the driver's watches select by metadata.name).
    for values in ({"restrictToNamespaces": ["shop"]}, {"clusterWide": True}):
        values = dict(values, resourceNames=["ca-bundle"])
        objs = objects(render({"trust": values}))
        validate(objs, f"trust-names {values}")
        trust_rules = [r for o in by_kind(objs, "ClusterRole") + by_kind(objs, "Role")
                       for r in o["rules"] if "configmaps" in r["resources"]]
        check(len(trust_rules) == 1 and trust_rules[0].get("resourceNames") == ["ca-bundle"],
              f"trust-names {values}: resourceNames: {trust_rules}")

    # Local mode has no API access: no trust RBAC, and trust values that need it are refused.
    objs = objects(render({"issuer": "local", "trust": {"secrets": True}}))
    check(not by_kind(objs, "ClusterRole") and not by_kind(objs, "Role"), "trust-local: no RBAC")


def case_request_namespaces():
    # certManager.namespaces: requests (create/delete/list/watch) and events only there, one
    # watch per namespace (--request-namespaces); nothing about requests is cluster-wide.
    objs = objects(render({"certManager": {"namespaces": ["shop", "payments"]},
                           "trust": {"restrictToNamespaces": ["lib"]}}))
    validate(objs, "namespaces")
    ds, _, _ = check_common(objs, "namespaces", "cert-manager")
    check(rules_of(objs) == {
        # Pod identity needs its CSIDriver and the node's pods whatever the namespaces.
        (("storage.k8s.io",), ("csidrivers",)): ["get"],
        (("",), ("pods",)): ["list", "watch"],
        (("certificates.k8s.io",), ("clustertrustbundles",)): ["list", "watch"],
    }, f"namespaces: ClusterRole has only the cluster-scoped trust bundles and pod identity: "
       f"{rules_of(objs)}")
    roles = roles_by_namespace(objs, "namespaces")
    issuing = {(("cert-manager.io",), ("certificaterequests",)): ["create", "delete", "list", "watch"],
               (("",), ("events",)): ["create"],
               (("",), ("configmaps",)): ["list", "watch"]}
    check(roles == {"shop": issuing, "payments": issuing,
                    "lib": {(("",), ("configmaps",)): ["list", "watch"]}},
          f"namespaces: Roles {roles}")
    args = arg_map(container(ds, "certvol"))
    check(args.get("request-namespaces") == "shop,payments",
          f"namespaces: --request-namespaces names the Roles' namespaces: {args}")

    objs = objects(render({"certManager": {"namespaces": ["shop"], "tokenRequest": True}}))
    validate(objs, "namespaces+token-request")
    roles = roles_by_namespace(objs, "namespaces+token-request")
    check(roles.get("shop", {}).get((("cert-manager.io",), ("certificaterequests",)))
          == ["delete", "list", "watch"],
          f"namespaces+token-request: the pod's token creates, the driver deletes and watches: {roles}")

    # No cluster-scoped trust source either: no ClusterRole at all.
    objs = objects(render({"certManager": {"namespaces": ["shop"]},
                           "trust": {"clusterTrustBundles": False}}))
    validate(objs, "namespaces-only")
    check(not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding"),
          "namespaces-only: no ClusterRole or ClusterRoleBinding")
    check(sorted(roles_by_namespace(objs, "namespaces-only")) == ["shop"],
          "namespaces-only: one Role in shop")


def case_kubelet_dir():
    # A distribution that moves kubelet's root: the flag, the pods mount and the plugin paths move
    # together, so the driver's target-path check matches where kubelet really puts pods.
    objs = objects(render({"kubeletRootDir": "/var/lib/k0s/kubelet/"}))
    validate(objs, "kubelet-dir")
    ds = one(objs, "DaemonSet", "kubelet-dir")
    c = container(ds, "certvol")
    check(arg_map(c).get("kubelet-dir") == "/var/lib/k0s/kubelet", "kubelet-dir: --kubelet-dir")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    check(mounts.get("pods-dir", {}).get("mountPath") == "/var/lib/k0s/kubelet/pods",
          "kubelet-dir: pods mounted where the flag says")


def case_refused():
    bad = [
        {"issuer": "vault"},
        {"issuer": "local", "certManager": {"tokenRequest": True}},
        {"issuer": "kubernetes-csr", "certManager": {"tokenRequest": True}},
        {"kubernetesCsr": {"readSecrets": True}},
        {"local": {"caSecretName": "ca"}},
        {"logFormat": "xml"},
        {"issuer": "local", "trust": {"namespace": "certvol-trust"}},
        {"issuer": "local", "trust": {"restrictToNamespaces": ["shop"]}},
        {"issuer": "local", "trust": {"clusterWide": True}},
        {"issuer": "kubernetes-csr", "certManager": {"namespaces": ["shop"]}},
        {"trust": {"clusterWide": True, "restrictToNamespaces": ["shop"]}},
    ]
    for values in bad:
        try:
            render(values)
        except helm.HelmError:
            continue
        check(False, f"render must fail for {values}")


def plain_text(rendered):
    version = helm.Chart.load(str(CHART)).metadata["appVersion"]
    parts = [PLAIN_HEADER.format(version=version)]
    for name in PLAIN_ORDER:
        text = rendered.get(f"certvol/templates/{name}", "").strip()
        if text:
            parts.append(f"---\n# Source: certvol/templates/{name}\n{text}\n")
    return "".join(parts)


def main():
    lint = helm.lint(str(CHART), strict=True, namespace=NAMESPACE)
    for m in lint.get("messages", []):
        check(m.get("severity", 0) < 2, f"helm lint: {m}")
    check(not lint.get("errors"), f"helm lint errors: {lint.get('errors')}")

    case_default()
    case_token_request()
    case_kubernetes_csr()
    case_local()
    case_operations()
    case_trust()
    case_request_namespaces()
    case_kubelet_dir()
    case_refused()

    plain = plain_text(render({}))
    if "--write-plain" in sys.argv:
        PLAIN.write_text(plain)
        print(f"wrote {PLAIN}")
    else:
        check(PLAIN.read_text() == plain, "manifests/certvol.yaml is not the default render; "
              "regenerate it with manifests/tests/check_chart.py --write-plain")
        for obj in yaml.safe_load_all(PLAIN.read_text()):
            if obj:
                print(f"  {obj['kind']}/{obj['metadata']['name']}")

    if failures:
        for f in failures:
            print(f"FAIL: {f}")
        sys.exit(1)
    print(f"chart OK: Helm {helm.helm_sdk_version()}, schemas {', '.join(KUBE_VERSIONS)}")


if __name__ == "__main__":
    main()
