"""RBAC for Kubernetes metadata, in the chart and the plain manifests, checked without helm
or a cluster (like test_deployments.py): templates/rbac.yaml is rendered for several value
sets by a renderer that knows its few constructs (and refuses others), and what it renders
is checked as Kubernetes would read it: a ClusterRole with get/list/watch on pods (and on
namespaces only when namespaces are used), bound to the ServiceAccount the DaemonSet runs
as, whose token is then mounted."""
import os
import re
import unittest

import yaml

from test_deployments import (CHART, K8S, TEMPLATES, MiniRenderer, POD_ENV, block_keyword, chart_values,
                              check_config, load_yaml, read, render_chart_config, template_tokens)

READ_ONLY = ["get", "list", "watch"]


class RbacRenderer(MiniRenderer):
    """MiniRenderer plus what rbac.yaml uses: `and`/`or` of .Values paths, the chart's
    name includes (as helm renders them for release "loglet" in namespace "logging"),
    `| nindent N`, and the trimming comment on top."""

    INCLUDES = {"loglet.fullname": "loglet", "loglet.namespace": "logging",
                "loglet.labels": "app.kubernetes.io/name: loglet\napp.kubernetes.io/instance: loglet"}

    def _expr(self, expr):
        for op in ("and", "or"):
            if expr.startswith(op + " "):
                vals = [self._truthy(self._expr(p)) for p in expr[len(op) + 1:].split()]
                return all(vals) if op == "and" else any(vals)
        m = re.fullmatch(r'include "([a-zA-Z.]+)" \.', expr)
        if m:
            if m.group(1) == "loglet.serviceAccountName":
                sa = self.values["serviceAccount"]
                return sa["name"] or ("loglet" if sa["create"] else "default")
            return self.INCLUDES[m.group(1)]
        return super()._expr(expr)

    def _pipeline(self, body):
        parts = [p.strip() for p in body.split("|")]
        if len(parts) == 2 and parts[1].startswith("nindent "):
            n = int(parts[1].split()[1])
            return "\n" + "\n".join(" " * n + l for l in str(self._expr(parts[0])).splitlines())
        return super()._pipeline(body)


def render_rbac(values):
    tokens = [t for t in template_tokens(read(os.path.join(TEMPLATES, "rbac.yaml")))
              if not (t[0] == "action" and t[1].startswith("/*"))]
    text = RbacRenderer(values).render(tokens)
    return [d for d in yaml.safe_load_all(text) if d]


def rules_by_resource(role):
    out = {}
    for rule in role["rules"]:
        self_check = rule["apiGroups"] == [""]
        for r in rule["resources"]:
            out[r] = (self_check, sorted(rule["verbs"]))
    return out


class ChartRbacTest(unittest.TestCase):
    def check_bound(self, docs, values):
        role, binding = docs
        self.assertEqual((role["apiVersion"], role["kind"]), ("rbac.authorization.k8s.io/v1", "ClusterRole"))
        self.assertEqual(binding["kind"], "ClusterRoleBinding")
        self.assertEqual(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                              "name": role["metadata"]["name"]})
        sa = values["serviceAccount"]["name"] or "loglet"
        self.assertEqual(binding["subjects"], [{"kind": "ServiceAccount", "name": sa, "namespace": "logging"}])
        return rules_by_resource(role)

    def test_default_values_read_pods_only(self):
        values = chart_values()
        rules = self.check_bound(render_rbac(values), values)
        self.assertEqual(rules, {"pods": (True, sorted(READ_ONLY))})

    def test_namespaces_only_when_used(self):
        for overrides in ({"kubernetes.namespaces": True}, {"kubernetes.namespaceLabels": ["team"]}):
            with self.subTest(**overrides):
                values = chart_values(**overrides)
                rules = self.check_bound(render_rbac(values), values)
                self.assertEqual(rules, {"pods": (True, sorted(READ_ONLY)), "namespaces": (True, sorted(READ_ONLY))})

    def test_nothing_when_disabled_or_not_created(self):
        self.assertEqual(render_rbac(chart_values(**{"kubernetes.enabled": False})), [])
        self.assertEqual(render_rbac(chart_values(**{"rbac.create": False})), [])

    def test_named_service_account_is_the_subject(self):
        values = chart_values(**{"serviceAccount.name": "agent"})
        self.check_bound(render_rbac(values), values)

    def test_token_is_mounted_when_enabled(self):
        ds = read(os.path.join(TEMPLATES, "daemonset.yaml"))
        self.assertIn("automountServiceAccountToken: {{ or .Values.kubernetes.enabled "
                      ".Values.serviceAccount.automountServiceAccountToken }}", ds)

    def test_rendered_config_carries_the_kubernetes_values(self):
        values = chart_values(**{"kubernetes.podLabels": ["app", {"from": "team.example.com/owner", "to": "team"}],
                                 "kubernetes.namespaceLabels": ["tier"], "kubernetes.waitForMetadata": "5s",
                                 "kubernetes.structuredMetadata": True})
        eff = check_config(self, render_chart_config(values), POD_ENV)
        k = eff["kubernetes"]
        self.assertIn(k["enabled"], (True, "true"))  # the enum prints as a plain scalar
        self.assertEqual(k["pod_labels"], ["app", "team.example.com/owner=team"])
        self.assertEqual(k["namespace_labels"], ["tier"])
        self.assertEqual(k["wait_for_metadata"], "5s")
        self.assertIs(k["structured_metadata"], True)
        eff = check_config(self, render_chart_config(chart_values()), POD_ENV)
        self.assertEqual(eff["kubernetes"]["pod_labels"], ["app", "app.kubernetes.io/name=name",
                                                          "app.kubernetes.io/component=component",
                                                          "app.kubernetes.io/instance=instance"])


class ManifestRbacTest(unittest.TestCase):
    def test_plain_manifests_bind_read_access_on_pods_to_the_daemonsets_account(self):
        role = load_yaml(os.path.join(K8S, "clusterrole.yaml"))
        binding = load_yaml(os.path.join(K8S, "clusterrolebinding.yaml"))
        self.assertEqual((role["kind"], binding["kind"]), ("ClusterRole", "ClusterRoleBinding"))
        self.assertEqual(rules_by_resource(role), {"pods": (True, sorted(READ_ONLY))})
        self.assertEqual(binding["roleRef"]["name"], role["metadata"]["name"])
        ds = load_yaml(os.path.join(K8S, "daemonset.yaml"))
        sa = load_yaml(os.path.join(K8S, "serviceaccount.yaml"))
        pod = ds["spec"]["template"]["spec"]
        self.assertEqual(binding["subjects"], [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                                "namespace": ds["metadata"]["namespace"]}])
        self.assertEqual(sa["metadata"]["name"], pod["serviceAccountName"])
        self.assertIs(pod["automountServiceAccountToken"], True)
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")


if __name__ == "__main__":
    unittest.main(verbosity=2)
