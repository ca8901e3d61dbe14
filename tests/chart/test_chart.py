"""The Helm chart and the static manifest rendered from it (the image recipe: test_image_recipe.py).

Rendering goes through Helm's own engine (helm-python-sdk), and Kubernetes
objects are checked against the API's schemas offline (kubernetes-validate).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

import felix_nat64
from felix_nat64.model.settings import SPECS, SettingsResult, resolve_settings
from felix_nat64.wire.messages import ConfigUpdate, RawConfigSource

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "felix-nat64"
MANIFEST = REPO / "deploy" / "felix-nat64.yaml"
MODES = ("operator", "typha", "kubernetes")
# Oldest Kubernetes the chart declares, a middle one, the newest with schemas.
KUBE_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
READ_VERBS = {"get", "list", "watch"}


def _load_render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_manifest", REPO / "scripts" / "render-manifest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_script = _load_render_script()


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for _, text in render_script.render_documents(values or {})]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, [o["kind"] for o in objects]
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(objects, "DaemonSet")["spec"]["template"]["spec"]
    return spec


def main_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(objects)["containers"]
    assert [c["name"] for c in containers] == ["felix-nat64"]
    container: dict[str, Any] = containers[0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping; duplicate names are an error."""
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), names
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def default_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def with_override(override: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = render_script.merge_values(default_values(), override)
    return merged


def k8s_validate(obj: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# -- files parse --------------------------------------------------------------


def test_plain_yaml_and_json_files_parse() -> None:
    # Templates are Go templates, not YAML: their output is parsed in the
    # rendering tests below.
    for path in (CHART / "Chart.yaml", CHART / "values.yaml", *sorted((REPO / "deploy").glob("*.yaml"))):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(d is None or isinstance(d, dict) for d in docs), path
    json.loads((CHART / "values.schema.json").read_text())


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "felix-nat64"
    assert chart["appVersion"] == felix_nat64.__version__
    image = main_container(render())["image"]
    assert image == f"felix-nat64:{felix_nat64.__version__}-calico-{default_values()['calico']['version']}"


def test_helm_lint_is_clean() -> None:
    report = helm_python.lint(str(CHART), strict=True)
    assert not report["errors"], report
    # Severity 1 is informational ("icon is recommended"): no warnings or errors.
    assert all(m["severity"] <= 1 for m in report["messages"]), report["messages"]


# -- values schema --------------------------------------------------------------


def test_schema_is_draft7_and_accepts_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.validate(default_values(), schema(), cls=jsonschema.Draft7Validator)


GOOD_OVERRIDES: list[dict[str, Any]] = [
    {"nat64": {"prefixes": ["64:ff9b::/96", "2001:db8:64::/96", "2001:db8:65::c000:200/120"],
               "enabled": True, "snatAddress": "192.0.2.10", "sourceCIDRs": ["fd00:10:244::/56"],
               "portRange": "32768-65535", "mtu": 1450, "tcpEstablishedTimeout": "2h4m",
               "tcpTransitoryTimeout": 240, "udpTimeout": "5m", "icmpTimeout": "60s",
               "pool4CIDR": "169.254.64.0/24", "pool4PortRange": "2000-60000", "firewallMark": "0x1000",
               "kubeProxyMasqueradeBit": 14, "routingTable": 6464,
               "refusedCIDRs": ["168.63.129.16/32", "203.0.113.0/24"],
               "routingRulePriority": 96, "resyncInterval": "30s", "logLevel": "debug",
               "logFormat": "json"}},
    {"nat64": {"firewallMark": 8192, "resyncInterval": 45}},
    {"metrics": {"host": "0.0.0.0", "serviceMonitor": {"enabled": True, "interval": "15s"}}},
    {"metrics": {"host": "hostIP"}},
    {"metrics": {"port": 0}},
    {"updateStrategy": {"maxUnavailable": "20%"}},
    {"felix": {"interfacePrefix": "cali,tap",
               "extraEnv": [{"name": "FELIX_IPV6SUPPORT", "value": "true"},
                            {"name": "FELIX_BPFENABLED", "value": "false"}]}},
    {"felix": {"interfacePrefix": "eni", "iptablesMarkMask": "0xffff0000", "nftablesMarkMask": 4278190080,
               "nftablesMode": "Auto"}},
    {"restartToken": 1700000000},
    {"datastore": "typha", "typha": {"tls": {"enabled": True, "certSecret": "calico-felix-certs",
                                             "certKey": "felix.crt", "keyKey": "felix.key",
                                             "caConfigMap": "calico-typha-ca", "caKey": "typhaca.crt",
                                             "commonName": "", "uriSAN": "spiffe://cluster/typha"}}},
    {"apiServer": {"host": "10.0.0.1", "port": 6443}},
    {"metrics": {"host": "0.0.0.0", "serviceMonitor": {"enabled": True},
                 "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                    "additionalRuleLabels": {"team": "network"},
                                    "pool4UtilisationThreshold": 0.9, "refusedPacketsPerSecond": 0.5},
                 "grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}},
]


@pytest.mark.parametrize("override", GOOD_OVERRIDES)
def test_good_values_validate_and_render(override: dict[str, Any]) -> None:
    jsonschema.validate(with_override(override), schema(), cls=jsonschema.Draft7Validator)
    for obj in render(override):
        if obj["kind"] not in CRD_KINDS:
            k8s_validate(obj)


BAD_OVERRIDES: list[tuple[dict[str, Any], str]] = [
    ({"datastore": "etcd"}, "datastore"),
    ({"nat64": {"prefixes": ["64:ff9b::/64"]}}, "prefixes"),
    ({"nat64": {"prefixes": ["192.0.2.0/24"]}}, "prefixes"),
    ({"nat64": {"prefixes": "64:ff9b::/96"}}, "prefixes"),
    ({"nat64": {"prefixes": ["64:ff9b::/96", "64:ff9b::/96"]}}, "prefixes"),
    ({"nat64": {"prefix": ["64:ff9b::/96"]}}, "prefix"),
    ({"nat64": {"snatAddress": "2001:db8::1"}}, "snatAddress"),
    ({"nat64": {"snatAddress": "192.0.2.300"}}, "snatAddress"),
    ({"nat64": {"sourceCIDRs": ["10.0.0.0/8"]}}, "sourceCIDRs"),
    ({"nat64": {"mtu": 1000}}, "mtu"),
    ({"nat64": {"pool4CIDR": "169.254.64.0/30"}}, "pool4CIDR"),
    ({"nat64": {"refusedCIDRs": ["2001:db8::/32"]}}, "refusedCIDRs"),
    ({"nat64": {"firewallMark": "0xZZ"}}, "firewallMark"),
    ({"nat64": {"routingTable": 254}}, "routingTable"),
    ({"nat64": {"kubeProxyMasqueradeBit": 32}}, "kubeProxyMasqueradeBit"),
    ({"nat64": {"udpTimeout": "5 minutes"}}, "udpTimeout"),
    ({"nat64": {"logFormat": "xml"}}, "logFormat"),
    ({"nat64": {"enabled": "yes"}}, "enabled"),
    ({"metrics": {"port": 9099}}, "port"),
    ({"metrics": {"host": "localhost"}}, "host"),
    ({"metrics": {"prometheusRule": {"pool4UtilisationThreshold": 1.5}}}, "pool4UtilisationThreshold"),
    ({"metrics": {"prometheusRule": {"additionalRuleLabels": {"severity": "page"}}}}, "additionalRuleLabels"),
    ({"metrics": {"prometheusRule": {"refusedPacketsPerSecond": -1}}}, "refusedPacketsPerSecond"),
    ({"metrics": {"grafanaDashboard": {"namespace": "Monitoring"}}}, "namespace"),
    ({"felix": {"extraEnv": [{"name": "FELIX_NAT64PREFIXES", "value": "64:ff9b::/96"}]}}, "name"),
    ({"felix": {"extraEnv": [{"name": "FELIX_DataplaneDriver", "value": "/bin/true"}]}}, "name"),
    ({"felix": {"extraEnv": [{"name": "FELIX_TYPHAADDR", "value": "10.0.0.1:5473"}]}}, "name"),
    ({"felix": {"extraEnv": [{"value": "x"}]}}, "name"),
    ({"felix": {"interfacePrefix": "cali*"}}, "interfacePrefix"),
    ({"felix": {"interfacePrefix": "cali,,tap"}}, "interfacePrefix"),
    ({"felix": {"iptablesMarkMask": "ffff0000"}}, "iptablesMarkMask"),
    ({"felix": {"nftablesMarkMask": 0}}, "nftablesMarkMask"),
    ({"felix": {"nftablesMode": "enabled"}}, "nftablesMode"),
    ({"updateStrategy": {"maxUnavailable": 0}}, "maxUnavailable"),
    ({"typha": {"tls": {"enabled": "true"}}}, "enabled"),
    ({"image": {"digest": "sha256:abc"}}, "digest"),
    ({"calico": {"version": "3.32"}}, "version"),
    ({"unknownKey": True}, "unknownKey"),
]


@pytest.mark.parametrize(("override", "where"), BAD_OVERRIDES)
def test_bad_values_are_rejected_by_the_schema_and_by_helm(override: dict[str, Any], where: str) -> None:
    values = with_override(override)
    problems = list(jsonschema.Draft7Validator(schema()).iter_errors(values))
    assert problems, override
    assert any(where in "/".join(map(str, p.absolute_path)) or where in p.message for p in problems)
    with pytest.raises(render_script.RenderError):
        render(override)


@pytest.mark.parametrize(("override", "message"), [
    ({"metrics": {"service": {"enabled": True}}}, "cannot scrape 127.0.0.1"),
    ({"metrics": {"port": 0, "serviceMonitor": {"enabled": True}}}, "set metrics.port"),
    ({"typha": {"tls": {"enabled": False}}}, "only accepts mutual TLS"),
    ({"typha": {"tls": {"commonName": "", "uriSAN": ""}}}, "commonName or uriSAN"),
    ({"typha": {"tls": {"certSecret": ""}}}, "certSecret"),
    ({"apiServer": {"host": "10.0.0.1"}}, "both host and port"),
    ({"felix": {"extraEnv": [{"name": "FELIX_WIREGUARDENABLED", "value": "false"}]}},
     "FELIX_WIREGUARDENABLED is refused"),
    ({"felix": {"extraEnv": [{"name": "felix_wireguardHostEncryptionEnabled", "value": "true"}]}},
     "felix_wireguardHostEncryptionEnabled is refused"),
    ({"felix": {"extraEnv": [{"name": "FELIX_WIREGUARDINTERFACENAME", "value": "wireguard.cali"}]}},
     "never deletes the node's WireGuard device"),
    ({"felix": {"extraEnv": [{"name": "FELIX_DBG_WGBOOTSTRAP", "value": "1"}]}}, "is refused"),
    ({"felix": {"extraEnv": [{"name": "FELIX_INTERFACEPREFIX", "value": "eni"}]}},
     "set FELIX_INTERFACEPREFIX with felix.interfacePrefix instead"),
    ({"felix": {"extraEnv": [{"name": "Felix_NftablesMarkMask", "value": "0xff000000"}]}},
     "with felix.nftablesMarkMask instead"),
    ({"felix": {"interfacePrefix": "cali,fn"}}, "\"fn\" would match felix-nat64's own translator links"),
    ({"felix": {"interfacePrefix": "fn64-a"}}, "would match felix-nat64's own translator links"),
])
def test_combinations_that_cannot_work_fail_to_render(override: dict[str, Any], message: str) -> None:
    with pytest.raises(render_script.RenderError, match=re.escape(message)):
        render(override)


# -- rendering per datastore mode ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_datastore_mode_renders_valid_objects(mode: str) -> None:
    objects = render({"datastore": mode})
    kinds = sorted(o["kind"] for o in objects)
    expected = ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"]
    if mode != "kubernetes":
        expected += ["Role", "RoleBinding"]
    assert kinds == sorted(expected)
    namespace = "calico-system" if mode == "operator" else "kube-system"
    for obj in objects:
        k8s_validate(obj)
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]

    env = env_of(main_container(objects))
    if mode == "kubernetes":
        assert not [name for name in env if name.startswith("FELIX_TYPHA")]
    else:
        assert env["FELIX_TYPHAK8SSERVICENAME"] == "calico-typha"
        assert env["FELIX_TYPHAK8SNAMESPACE"] == namespace
    tls_env = {"FELIX_TYPHACAFILE", "FELIX_TYPHACERTFILE", "FELIX_TYPHAKEYFILE"}
    assert (tls_env <= env.keys()) == (mode == "operator")


def test_operator_mode_uses_the_operators_typha_credentials() -> None:
    objects = render({"datastore": "operator"})
    env = env_of(main_container(objects))
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    mounts = {m["name"]: m for m in main_container(objects)["volumeMounts"]}
    assert volumes["typha-client"]["secret"]["secretName"] == "node-certs"
    assert volumes["typha-ca"]["configMap"]["name"] == "tigera-ca-bundle"
    assert env["FELIX_TYPHACERTFILE"] == mounts["typha-client"]["mountPath"] + "/tls.crt"
    assert env["FELIX_TYPHAKEYFILE"] == mounts["typha-client"]["mountPath"] + "/tls.key"
    assert env["FELIX_TYPHACAFILE"] == mounts["typha-ca"]["mountPath"] + "/tigera-ca-bundle.crt"
    assert env["FELIX_TYPHACN"] == "typha-server"
    assert mounts["typha-client"]["readOnly"] and mounts["typha-ca"]["readOnly"]


def test_typha_mode_with_tls_uses_the_given_secrets() -> None:
    override = GOOD_OVERRIDES[9]
    objects = render(override)
    env = env_of(main_container(objects))
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["typha-client"]["secret"]["secretName"] == "calico-felix-certs"
    assert {i["key"] for i in volumes["typha-client"]["secret"]["items"]} == {"felix.crt", "felix.key"}
    assert env["FELIX_TYPHACAFILE"].endswith("/typhaca.crt")
    assert env["FELIX_TYPHAURISAN"] == "spiffe://cluster/typha"
    assert "FELIX_TYPHACN" not in env


# -- the static manifest -----------------------------------------------------------


def test_static_manifest_equals_a_fresh_render() -> None:
    assert MANIFEST.read_text() == render_script.render_manifest(), "run: scripts/render-manifest.py"


def test_static_manifest_check_mode(tmp_path: Path) -> None:
    assert render_script.main(["--check", "-o", str(MANIFEST)]) == 0
    stale = tmp_path / "stale.yaml"
    stale.write_text(MANIFEST.read_text().replace("maxUnavailable: 1", "maxUnavailable: 2"))
    assert render_script.main(["--check", "-o", str(stale)]) == 1


def test_static_manifest_objects_validate() -> None:
    objects = [o for o in yaml.safe_load_all(MANIFEST.read_text()) if o]
    assert {o["kind"] for o in objects} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                            "RoleBinding", "DaemonSet"}
    for obj in objects:
        k8s_validate(obj)
    assert only(objects, "DaemonSet")["metadata"]["namespace"] == "calico-system"


# -- security-relevant content --------------------------------------------------------

# Felix settings that keep the shadow Felix off everything calico-node owns.
FELIX_OVERRIDES = {
    "FELIX_USEINTERNALDATAPLANEDRIVER": "false",
    "FELIX_DATAPLANEDRIVER": "felix-nat64-driver",
    "FELIX_DATASTORETYPE": "kubernetes",
    "FELIX_HEALTHENABLED": "false",
    "FELIX_PROMETHEUSMETRICSENABLED": "false",
    "FELIX_USAGEREPORTINGENABLED": "false",
    "FELIX_ENDPOINTREPORTINGENABLED": "false",
    "FELIX_ENDPOINTSTATUSPATHPREFIX": "none",
    "FELIX_POLICYSYNCPATHPREFIX": "none",
    "FELIX_FLOWLOGSGOLDMANESERVER": "none",
    "FELIX_FLOWLOGSLOCALREPORTER": "Disabled",
    "FELIX_LOGFILEPATH": "none",
    "FELIX_LOGSEVERITYSYS": "none",
}
NODE_NAME = {"fieldRef": {"fieldPath": "spec.nodeName"}}
ALLOWED_HOST_PATHS = {"/run/netns", "/var/run/felix-nat64", "/var/lib/calico", "/lib/modules"}


@pytest.mark.parametrize("mode", MODES)
def test_shadow_felix_cannot_disturb_calico_node(mode: str) -> None:
    env = env_of(main_container(render({"datastore": mode})))
    for name, value in FELIX_OVERRIDES.items():
        assert env[name] == value, name
    assert env["FELIX_FELIXHOSTNAME"] == NODE_NAME and env["NODENAME"] == NODE_NAME
    # Felix's own health and metrics ports stay closed; the driver's port is not Calico's.
    assert int(env["FELIX_NAT64METRICSPORT"]) not in {9091, 9093, 9094, 9098, 9099}


# Felix's WireGuard settings under which its start-up bootstrap returns before
# it touches netlink or the datastore (felix/wireguard/bootstrap.go:207-220 at
# v3.26.0 to master; docs/install.md, "WireGuard").
WIREGUARD_DISARMED = {
    "FELIX_WIREGUARDENABLED": "true",
    "FELIX_WIREGUARDENABLEDV6": "true",
    "FELIX_WIREGUARDHOSTENCRYPTIONENABLED": "false",
}
# Felix's iface-param format (felix/config/config_params.go IfaceParamRegexp).
FELIX_IFACE_NAME = re.compile(r"^[a-zA-Z0-9:._+-]{1,15}$")


def _rendered_felix_envs() -> Iterator[tuple[str, dict[str, Any]]]:
    """The second Felix's environment in every way the chart can render it."""
    for mode in MODES:
        yield mode, env_of(main_container(render({"datastore": mode})))
        yield f"{mode}+values", env_of(main_container(render({
            "datastore": mode, "nat64": {"prefixes": ["64:ff9b::/96"]},
            "felix": {"interfacePrefix": "eni", "nftablesMode": "Enabled",
                      "extraEnv": [{"name": "FELIX_IPV6SUPPORT", "value": "true"}]}})))
    yield "typha+tls", env_of(main_container(render(GOOD_OVERRIDES[9])))
    manifest = [o for o in yaml.safe_load_all(MANIFEST.read_text()) if o]
    yield "static manifest", env_of(main_container(manifest))


def test_wireguard_bootstrap_is_disarmed_in_every_rendered_mode() -> None:
    seen = []
    for what, env in _rendered_felix_envs():
        seen.append(what)
        for name, value in WIREGUARD_DISARMED.items():
            assert env[name] == value, (what, name)
        for name in ("FELIX_WIREGUARDINTERFACENAME", "FELIX_WIREGUARDINTERFACENAMEV6"):
            # A valid name (Felix refuses none and empty: "non-zero"), and not one of
            # calico-node's devices (Felix's defaults), should anything ever act on it.
            assert FELIX_IFACE_NAME.match(env[name]), (what, name)
            assert env[name] not in {"wireguard.cali", "wg-v6.cali"}, (what, name)
        assert "FELIX_DBG_WGBOOTSTRAP" not in {n.upper() for n in env}, what
    assert len(seen) == 2 * len(MODES) + 2


def test_mirrored_felix_settings_render_only_when_set() -> None:
    env = env_of(main_container(render()))
    assert not {"FELIX_INTERFACEPREFIX", "FELIX_IPTABLESMARKMASK", "FELIX_NFTABLESMARKMASK",
                "FELIX_NFTABLESMODE"} & env.keys()
    env = env_of(main_container(render(GOOD_OVERRIDES[7])))
    assert env["FELIX_INTERFACEPREFIX"] == "eni"
    assert env["FELIX_IPTABLESMARKMASK"] == "0xffff0000"
    assert env["FELIX_NFTABLESMARKMASK"] == "4278190080"
    assert env["FELIX_NFTABLESMODE"] == "Auto"


def test_mirrored_felix_settings_reach_the_driver_checks() -> None:
    # Felix forwards its own parameters too: the driver then checks its mark
    # against the mask in force and steers the right interfaces.
    env = env_of(main_container(render({"felix": {"interfacePrefix": "eni,tap", "nftablesMode": "Enabled",
                                                   "nftablesMarkMask": "0xff00"}})))
    forwarded = {k.removeprefix("FELIX_").lower(): v for k, v in env.items()
                 if k.startswith("FELIX_") and isinstance(v, str)}

    def resolved(env: dict[str, str]) -> SettingsResult:
        update = ConfigUpdate(MappingProxyType({}),
                              (RawConfigSource("environment variable", MappingProxyType(env)),))
        return resolve_settings(update, default_hostname="node-1")

    result = resolved(forwarded)
    # The default NAT64FirewallMark 0x1000 is inside that nftables mask.
    assert [e.key for e in result.errors] == ["NAT64FirewallMark"]
    assert "NftablesMarkMask 0xff00" in result.errors[0].reason
    settings = resolved({**forwarded, "nat64firewallmark": "0x10000000"}).settings
    assert settings is not None and settings.interface_prefixes == ("eni", "tap")
    assert not settings.felix_bpf_enabled


def test_pod_shape_and_privileges() -> None:
    objects = render()
    spec = pod_spec(objects)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"operator": "Exists", "effect": "NoExecute"} in spec["tolerations"]
    assert spec["nodeSelector"]["felix-nat64/dual-stack"] == "true"

    # The init container: CAP_SYS_MODULE and nothing else, and the modules read-only.
    (init,) = spec["initContainers"]
    assert init["args"] == ["felix-nat64-modprobe"]
    sc = init["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_MODULE"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert init["volumeMounts"] == [{"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}]

    # The driver: privileged only because Bidirectional propagation demands it.
    main = main_container(objects)
    assert main["securityContext"]["privileged"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"
    bidirectional = [m["mountPath"] for m in main["volumeMounts"]
                     if m.get("mountPropagation") == "Bidirectional"]
    assert bidirectional == ["/run/netns"]
    assert mounts["/var/lib/calico"]["readOnly"] is True
    assert "/lib/modules" not in mounts
    # Nothing of calico-node's runtime state: no /var/run/calico, no /var/log/calico.
    volumes = pod_spec(objects)["volumes"]
    host_paths = {v["hostPath"]["path"] for v in volumes if "hostPath" in v}
    assert host_paths == ALLOWED_HOST_PATHS


def test_rbac_is_read_only() -> None:
    for mode in MODES:
        objects = render({"datastore": mode})
        for role in (o for o in objects if o["kind"] in {"ClusterRole", "Role"}):
            for rule in role["rules"]:
                assert set(rule["verbs"]) <= READ_VERBS, (mode, rule)
                assert "secrets" not in rule["resources"]
        cluster_role = only(objects, "ClusterRole")
        resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
        # With Typha, Felix lists nothing itself beyond its start-up configuration.
        assert ("pods" in resources) == (mode == "kubernetes")
        assert {"felixconfigurations", "clusterinformations", "ippools", "nodes"} <= resources


def test_typha_discovery_role_lives_in_typhas_namespace() -> None:
    objects = render({"datastore": "typha", "typha": {"namespace": "calico-typha-ns"}})
    assert only(objects, "Role")["metadata"]["namespace"] == "calico-typha-ns"
    binding = only(objects, "RoleBinding")
    assert binding["subjects"][0]["namespace"] == "kube-system"


# -- NAT64 settings ------------------------------------------------------------------

ALL_SETTINGS = GOOD_OVERRIDES[0]


def nat64_env(env: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("FELIX_NAT64")}


def test_chart_covers_every_driver_setting() -> None:
    env = env_of(main_container(render(ALL_SETTINGS)))
    rendered = {name.removeprefix("FELIX_") for name in nat64_env(env)}
    ours = {spec.key.upper() for spec in SPECS if not spec.felix_owned}
    assert rendered == ours
    assert set(ALL_SETTINGS["nat64"]) == set(default_values()["nat64"])


def test_rendered_settings_are_accepted_by_the_driver() -> None:
    env = env_of(main_container(render(ALL_SETTINGS)))
    # Felix strips FELIX_ and lower-cases environment keys before forwarding them.
    forwarded = {k.removeprefix("FELIX_").lower(): v for k, v in nat64_env(env).items()}
    update = ConfigUpdate(MappingProxyType({}),
                          (RawConfigSource("environment variable", MappingProxyType(forwarded)),))
    result = resolve_settings(update, default_hostname="node-1")
    assert result.ok, result.errors
    settings = result.settings
    assert settings is not None
    assert {str(p) for p in settings.prefixes} == {"2001:db8:64::/96", "2001:db8:65::c000:200/120",
                                                   "64:ff9b::/96"}
    assert settings.mtu == 1450 and settings.firewall_mark == 0x1000
    assert settings.tcp_transitory_timeout == 240
    assert settings.log_format == "json" and settings.metrics_port == 9096


def test_empty_settings_are_left_to_felixconfiguration() -> None:
    env = env_of(main_container(render()))
    assert set(nat64_env(env)) == {"FELIX_NAT64METRICSPORT", "FELIX_NAT64METRICSHOST"}
    env = env_of(main_container(render({"nat64": {"enabled": False, "mtu": None, "prefixes": []}})))
    assert set(nat64_env(env)) == {"FELIX_NAT64ENABLED", "FELIX_NAT64METRICSPORT", "FELIX_NAT64METRICSHOST"}
    assert env["FELIX_NAT64ENABLED"] == "false"


def test_large_numbers_are_not_printed_in_exponent_form() -> None:
    env = env_of(main_container(render({"nat64": {"routingTable": 4000000000, "firewallMark": 2147483648}})))
    assert env["FELIX_NAT64ROUTINGTABLE"] == "4000000000"
    assert env["FELIX_NAT64FIREWALLMARK"] == "2147483648"


def test_extra_env_reaches_felix() -> None:
    env = env_of(main_container(render(GOOD_OVERRIDES[6])))
    assert env["FELIX_INTERFACEPREFIX"] == "cali,tap" and env["FELIX_IPV6SUPPORT"] == "true"


def test_settings_changes_roll_the_pods_and_other_changes_do_not() -> None:
    def checksum(override: dict[str, Any]) -> str:
        annotations = only(render(override), "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["felix-nat64/config-checksum"]
        return value

    base = checksum({})
    assert checksum({"nat64": {"prefixes": ["64:ff9b::/96"]}}) != base
    assert checksum({"felix": {"logSeverity": "Debug"}}) != base
    assert checksum({"resources": {"requests": {"cpu": "200m"}}}) == base


def test_restart_token_becomes_an_annotation() -> None:
    annotations = only(render({"restartToken": 1700000000}), "DaemonSet")["spec"]["template"]["metadata"][
        "annotations"]
    assert annotations["felix-nat64/restart-token"] == "1700000000"
    assert "felix-nat64/restart-token" not in only(render(), "DaemonSet")["spec"]["template"]["metadata"][
        "annotations"]


# -- health and metrics ------------------------------------------------------------------


def probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: container[f"{kind}Probe"] for kind in ("startup", "liveness", "readiness")}


def test_probes_use_the_drivers_http_endpoints_over_loopback() -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        main = main_container(render({"metrics": {"host": host}}))
        for kind, probe in probes(main).items():
            assert probe["httpGet"]["host"] == "127.0.0.1"
            assert probe["httpGet"]["port"] == 9096
            assert probe["httpGet"]["path"] == ("/readiness" if kind == "readiness" else "/liveness")
        assert main["ports"] == [{"name": "metrics", "containerPort": 9096, "protocol": "TCP"}]
        assert env_of(main)["FELIX_NAT64METRICSHOST"] == host


@pytest.mark.parametrize("metrics", [{"host": "hostIP"}, {"port": 0}])
def test_probes_fall_back_to_the_status_command(metrics: dict[str, Any]) -> None:
    main = main_container(render({"metrics": metrics}))
    found = probes(main)
    assert found["readiness"]["exec"]["command"] == ["felix-nat64", "status"]
    for kind in ("startup", "liveness"):
        script = found[kind]["exec"]["command"][-1]
        assert "felix-nat64 status" in script and '"$rc" -eq 4' in script
    env = env_of(main)
    if metrics.get("host") == "hostIP":
        assert env["FELIX_NAT64METRICSHOST"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    else:
        assert env["FELIX_NAT64METRICSPORT"] == "0" and "FELIX_NAT64METRICSHOST" not in env
        assert "ports" not in main


def test_liveness_exec_probe_accepts_running_but_not_ready(tmp_path: Path) -> None:
    script = main_container(render({"metrics": {"port": 0}}))["livenessProbe"]["exec"]["command"]
    fake = tmp_path / "felix-nat64"
    for code, alive in ((0, True), (4, True), (5, False), (1, False)):
        fake.write_text(f"#!/bin/sh\nexit {code}\n")
        fake.chmod(0o755)
        result = subprocess.run(script, env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=False, timeout=10)
        assert (result.returncode == 0) == alive, code


def test_probes_can_be_turned_off() -> None:
    main = main_container(render({"probes": {"enabled": False}}))
    assert not {"startupProbe", "livenessProbe", "readinessProbe"} & main.keys()


def test_service_and_service_monitor() -> None:
    objects = render(GOOD_OVERRIDES[2])
    service = only(objects, "Service")
    k8s_validate(service)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9096, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    pod_labels = only(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]


# -- cleanup mode ---------------------------------------------------------------------------


def test_cleanup_mode_runs_no_felix() -> None:
    objects = render({"cleanupOnly": True, "nat64": {"routingTable": 7000}})
    spec = pod_spec(objects)
    main = main_container(objects)
    assert main["args"] == ["felix-nat64-run-once", "felix-nat64", "cleanup", "--force"]
    assert "initContainers" not in spec
    assert spec["automountServiceAccountToken"] is False
    assert env_of(main) == {"FELIX_NAT64ROUTINGTABLE": "7000"}
    assert main["readinessProbe"]["exec"]["command"] == ["test", "-e", "/tmp/felix-nat64-run-once.done"]
    assert {v["name"] for v in spec["volumes"]} == {"netns", "state", "tmp"}
    assert main["securityContext"]["privileged"] is True
    for obj in objects:
        k8s_validate(obj)


def test_render_script_passes_helm_style_arguments(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"datastore": "typha", "nat64": {"prefixes": ["64:ff9b::/96"]}}))
    out = tmp_path / "out.yaml"
    assert render_script.main(["-f", str(values), "--set", "nat64.mtu=1450", "--set-string",
                               "restartToken=42", "-o", str(out)]) == 0
    objects = [o for o in yaml.safe_load_all(out.read_text()) if o]
    env = env_of(main_container(objects))
    assert env["FELIX_NAT64PREFIXES"] == "64:ff9b::/96" and env["FELIX_NAT64MTU"] == "1450"
    assert env["FELIX_TYPHAK8SNAMESPACE"] == "kube-system"
    assert "custom values" in out.read_text().splitlines()[1]
    assert render_script.main(["--set", "datastore=etcd", "-o", str(out)]) == 1
    assert "datastore" in capsys.readouterr().err


def test_values_are_not_mutated_by_rendering() -> None:
    values = copy.deepcopy(GOOD_OVERRIDES[0])
    render(values)
    assert values == GOOD_OVERRIDES[0]
    assert sys.modules["helm_python"] is helm_python
