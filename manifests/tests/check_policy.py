#!/usr/bin/env python3
"""Evaluates the chart's ValidatingAdmissionPolicy against admission requests, as the API server.

The chart renders a ValidatingAdmissionPolicy (templates/admissionpolicy.yaml) that confines the
driver's ServiceAccount to the objects of its own node. This renders it (cert-manager mode,
token-request mode, kubernetes-csr mode) and runs its CEL with cel-python (a CEL implementation
independent of the chart) the way the API server's admission plugin does: match the request
against matchConstraints.resourceRules, evaluate matchConditions (all true, or the policy does
not apply), then the variables in order, then every validation (false or an evaluation error
refuses, failurePolicy Fail), with `object` (null on DELETE), `oldObject` (null on CREATE),
`request` (an AdmissionRequest: operation, userInfo with extra, resource, namespace, name) and
`variables`. Each case names the outcome it expects; refused cases must also yield a message.

What cel-python does not do: the API server's type check of each expression against the
resource's OpenAPI schema at policy creation, and its cost limits. Kubernetes' CEL library
functions are not used by the policy (only standard CEL: has, in, size, matches, ternaries).

Usage: check_policy.py   Run by e2e/tests/chart.rs after check_chart.py.
"""

import hashlib
import re
import sys

import celpy
from celpy import celtypes

from check_chart import NAMESPACE, RELEASE, by_kind, objects, render

DRIVER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
NODE_KEY = "authentication.kubernetes.io/node-name"
# The driver's own annotation: the node name verbatim (driver/src/issuer/certmanager/resource.rs).
NODE_NAME_ANNOTATION = "certvol.io/node-name"
LABEL = "certvol.io/node"

failures = []
ENV = celpy.Environment()


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def label_value(v):
    """driver/src/issuer/certmanager/resource.rs label_value: the value itself when it is a valid
    label value, else `sha256-` and the first 20 bytes of its SHA-256 in hex."""
    if v and len(v) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", v):
        return v
    return "sha256-" + hashlib.sha256(v.encode()).hexdigest()[:40]


def evaluate(expr, activation):
    return ENV.program(ENV.compile(expr)).evaluate(activation)


def rule_matches(rule, req):
    res = req["resource"]
    return ((rule["apiGroups"] == ["*"] or res["group"] in rule["apiGroups"])
            and (rule["apiVersions"] == ["*"] or res["version"] in rule["apiVersions"])
            and (rule["resources"] == ["*"] or res["resource"] in rule["resources"])
            and ("*" in rule["operations"] or req["operation"] in rule["operations"]))


def admit(policy, binding, req, obj, old):
    """("allowed" | "refused" | "not-matched", messages)."""
    spec = policy["spec"]
    check(binding["spec"]["policyName"] == policy["metadata"]["name"]
          and binding["spec"]["validationActions"] == ["Deny"], "binding: Deny with the policy")
    if not any(rule_matches(r, req) for r in spec["matchConstraints"]["resourceRules"]):
        return "not-matched", []
    act = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
           "request": celpy.json_to_cel(req)}
    for cond in spec.get("matchConditions", []):
        matched = evaluate(cond["expression"], act)
        check(isinstance(matched, celtypes.BoolType), f"matchCondition {cond['name']}: a bool")
        if not matched:
            return "not-matched", []
    variables = {}
    for var in spec.get("variables", []):
        act["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(var["name"])] = evaluate(var["expression"], act)
    act["variables"] = celtypes.MapType(variables)
    messages = []
    for v in spec["validations"]:
        try:
            ok = evaluate(v["expression"], act)
        except celpy.CELEvalError as e:
            ok, messages = False, messages + [f"evaluation error: {e}"]
        if not (isinstance(ok, celtypes.BoolType) and bool(ok)):
            msg = evaluate(v["messageExpression"], act) if "messageExpression" in v else v["message"]
            messages.append(str(msg))
    return ("refused" if messages else "allowed"), messages


def user(node=None, name=DRIVER):
    extra = {"authentication.kubernetes.io/pod-name": ["certvol-x7k2p"],
             "authentication.kubernetes.io/pod-uid": ["0b6e-pod"]}
    if node is not None:
        extra[NODE_KEY] = [node]
        extra["authentication.kubernetes.io/node-uid"] = ["9f1c-node"]
    return {"username": name, "uid": "e2e-uid",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                       "system:authenticated"], "extra": extra}


def request(op, group, version, resource, obj, old, who, namespace="shop"):
    target = obj if obj is not None else old
    kind = target["kind"]
    return {"uid": "adm-1", "operation": op, "userInfo": who,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": target["metadata"]["name"], "namespace": namespace, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1",
                        "kind": "CreateOptions" if op == "CREATE" else "DeleteOptions"}}


def node_annotations(node_label, node_name, annotations):
    """What the driver writes: its node's name verbatim in certvol.io/node-name (by default the
    label's value; None for a request filed before the driver set it)."""
    out = dict(annotations or {})
    name = node_label if node_name == "label" else node_name
    if name is not None:
        out.setdefault(NODE_NAME_ANNOTATION, name)
    return out


def cert_request(node_label=None, annotations=None, node_name="label"):
    meta = {"name": "web-0-3f2a", "namespace": "shop",
            "labels": {"certvol.io/volume": "sha256-" + "1" * 40, "certvol.io/pod": "web-0"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": "p1"}]}
    if node_label is not None:
        meta["labels"][LABEL] = node_label
    annotations = node_annotations(node_label, node_name, annotations)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest", "metadata": meta,
            "spec": {"request": "LS0t", "issuerRef": {"name": "ca", "kind": "Issuer"}}}


def csr(node_label=None, node_name="label"):
    meta = {"name": "certvol-7c1e", "labels": {"certvol.io/pod": "web-0"}}
    if node_label is not None:
        meta["labels"][LABEL] = node_label
    annotations = node_annotations(node_label, node_name, None)
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": meta, "spec": {"request": "LS0t", "signerName": "example.com/s",
                                       "usages": ["digital signature"]}}


def event(reporting="node-1", host="node-1", kind="Pod"):
    ev = {"apiVersion": "v1", "kind": "Event",
          "metadata": {"name": "web-0.1a2b3c4d5e6f7a8b", "namespace": "shop"},
          "involvedObject": {"apiVersion": "v1", "kind": kind, "name": "web-0",
                             "namespace": "shop", "uid": "p1"},
          "reason": "CertificateRequestDenied", "message": "denied", "type": "Warning",
          "source": {"component": "certvol"}, "reportingComponent": "certvol"}
    if reporting is not None:
        ev["reportingInstance"] = reporting
    if host is not None:
        ev["source"]["host"] = host
    return ev


def cr_req(op, obj, who):
    new, old = (obj, None) if op == "CREATE" else (None, obj)
    return request(op, "cert-manager.io", "v1", "certificaterequests", new, old, who), new, old


def csr_req(op, obj, who):
    new, old = (obj, None) if op == "CREATE" else (None, obj)
    return request(op, "certificates.k8s.io", "v1", "certificatesigningrequests", new, old, who,
                   namespace=""), new, old


def ev_req(obj, who):
    return request("CREATE", "", "v1", "events", obj, None, who), obj, None


LONG = "ip-10-0-0-1." + "compute." * 8 + "internal"  # a DNS subdomain longer than 63


def cert_manager_cases():
    n1 = user("node-1")
    return [
        ("create, own node", cr_req("CREATE", cert_request("node-1"), n1), "allowed"),
        ("create, other node's label", cr_req("CREATE", cert_request("node-2"), n1), "refused"),
        ("create, no node label", cr_req("CREATE", cert_request(None), n1), "refused"),
        ("create, empty node label", cr_req("CREATE", cert_request(""), n1), "refused"),
        ("create, token bound to no node", cr_req("CREATE", cert_request("node-1"), user(None)),
         "refused"),
        ("delete, own node", cr_req("DELETE", cert_request("node-1"), n1), "allowed"),
        ("delete, other node's request", cr_req("DELETE", cert_request("node-2"), n1), "refused"),
        ("delete, unlabelled request", cr_req("DELETE", cert_request(None), n1), "refused"),
        ("create, long node name, driver's hash label and the name verbatim",
         cr_req("CREATE", cert_request(label_value(LONG), node_name=LONG), user(LONG)),
         "allowed"),
        ("create, long node name, not a hash",
         cr_req("CREATE", cert_request("node-2", node_name=LONG), user(LONG)), "refused"),
        ("create, long node name, hash label of it but another name verbatim",
         cr_req("CREATE", cert_request(label_value(LONG), node_name=LONG + "x"), user(LONG)),
         "refused"),
        ("create, own label but no node-name annotation",
         cr_req("CREATE", cert_request("node-1", node_name=None), n1), "refused"),
        ("create, node-name annotation names another node",
         cr_req("CREATE", cert_request("node-1", node_name="node-2"), n1), "refused"),
        ("delete, own node, filed before the driver set node-name",
         cr_req("DELETE", cert_request("node-1", node_name=None), n1), "allowed"),
        ("delete, own label but node-name names another node",
         cr_req("DELETE", cert_request("node-1", node_name="node-2"), n1), "refused"),
        ("create, other user annotations kept",
         cr_req("CREATE", cert_request("node-1", {"team.example.com/owner": "payments"}), n1),
         "allowed"),
        ("event on own node", ev_req(event(), n1), "allowed"),
        ("event naming another node", ev_req(event("node-2", "node-2"), n1), "refused"),
        ("event, reportingInstance another node", ev_req(event("node-2", "node-1"), n1),
         "refused"),
        ("event without source.host", ev_req(event(host=None), n1), "refused"),
        ("event without reportingInstance", ev_req(event(reporting=None), n1), "refused"),
        ("event on a Node, not a Pod", ev_req(event(kind="Node"), n1), "refused"),
        ("event, token bound to no node", ev_req(event(), user(None)), "refused"),
        # The binding's matchConditions: other users are not this policy's business.
        ("pod's own token (certManager.tokenRequest) creates an unlabelled request",
         cr_req("CREATE", cert_request(None),
                user("node-2", "system:serviceaccount:shop:web")), "not-matched"),
        ("cert-manager deletes any request",
         cr_req("DELETE", cert_request("node-2"),
                user(None, "system:serviceaccount:cert-manager:cert-manager")), "not-matched"),
        ("another node agent's events", ev_req(event("node-9", "node-9"),
                                               user("node-1", "system:serviceaccount:x:agent")),
         "not-matched"),
        ("a user named like the driver in another namespace",
         cr_req("CREATE", cert_request(None),
                user("node-1", f"system:serviceaccount:other:{RELEASE}")), "not-matched"),
        # Resources outside matchConstraints.
        ("CSRs are not matched in cert-manager mode", csr_req("CREATE", csr(None), n1),
         "not-matched"),
    ]


def csr_cases():
    n1 = user("node-1")
    return [
        ("CSR create, own node", csr_req("CREATE", csr("node-1"), n1), "allowed"),
        ("CSR create, other node's label", csr_req("CREATE", csr("node-2"), n1), "refused"),
        ("CSR create, no node-name annotation", csr_req("CREATE", csr("node-1", node_name=None), n1),
         "refused"),
        ("CSR create, no label", csr_req("CREATE", csr(None), n1), "refused"),
        ("CSR delete, own node", csr_req("DELETE", csr("node-1"), n1), "allowed"),
        ("CSR delete, other node", csr_req("DELETE", csr("node-2"), n1), "refused"),
        ("CSR create, token bound to no node", csr_req("CREATE", csr("node-1"), user(None)),
         "refused"),
        ("event on own node", ev_req(event(), n1), "allowed"),
        ("event naming another node", ev_req(event("node-2", "node-2"), n1), "refused"),
        ("CertificateRequests are not matched in kubernetes-csr mode",
         cr_req("CREATE", cert_request(None), n1), "not-matched"),
        ("another user's CSR", csr_req("CREATE", csr(None),
                                       user(None, "system:serviceaccount:x:y")), "not-matched"),
    ]


def policy_of(values, case):
    objs = objects(render(values))
    policies = by_kind(objs, "ValidatingAdmissionPolicy")
    bindings = by_kind(objs, "ValidatingAdmissionPolicyBinding")
    check(len(policies) == 1 and len(bindings) == 1, f"{case}: one policy and one binding")
    return (policies[0], bindings[0]) if policies and bindings else (None, None)


def run(values, cases, mode):
    policy, binding = policy_of(values, mode)
    if policy is None:
        return 0
    # The API server refuses a policy whose message has a line break (and shows a
    # messageExpression result with one as the static message instead).
    for v in policy["spec"]["validations"]:
        check("\n" not in v.get("message", ""), f"{mode}: message with a line break: {v}")
        check(v.get("reason") in (None, "Unauthorized", "Forbidden", "Invalid",
                                  "RequestEntityTooLarge"), f"{mode}: reason {v.get('reason')}")
    for name, (req, obj, old), want in cases:
        got, messages = admit(policy, binding, req, obj, old)
        print(f"  {mode}: {name}: {got}" + (f" ({messages[0]})" if messages else ""))
        check(got == want, f"{mode}: {name}: expected {want}, got {got} {messages}")
        if got == "refused":
            check(all(m and "evaluation error" not in m and "\n" not in m for m in messages),
                  f"{mode}: {name}: refusal without a clean message: {messages}")
    return len(cases)


def main():
    n = run({}, cert_manager_cases(), "cert-manager")
    n += run({"certManager": {"tokenRequest": True}}, cert_manager_cases(), "token-request")
    n += run({"issuer": "kubernetes-csr"}, csr_cases(), "kubernetes-csr")
    for values in ({"issuer": "local"}, {"admissionPolicy": {"enabled": False}}):
        objs = objects(render(values))
        check(not by_kind(objs, "ValidatingAdmissionPolicy")
              and not by_kind(objs, "ValidatingAdmissionPolicyBinding"), f"{values}: no policy")
    if failures:
        for f in failures:
            print(f"FAIL: {f}")
        sys.exit(1)
    print(f"policy OK: {n} admission requests, cel-python")


if __name__ == "__main__":
    main()
