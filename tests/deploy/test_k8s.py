"""deploy/k8s rendered (base, dev, prod; by kustomize where it is installed and by our own
renderer always), validated strictly against the Kubernetes schemas, and checked for what
the design promises: every service deployed with probes and limits, secrets only as
placeholders, only the gateway reachable from outside, IRSA instead of keys."""

from __future__ import annotations

import base64
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.objectstore import uses_s3
from tests.deploy import kustomize
from tests.deploy.manifests import (
    CALLING_AWS,
    IMAGE_UID,
    KUSTOMIZATIONS,
    PLACEHOLDER,
    REPO,
    WITHOUT_DATABASE,
    by_kind,
    containers,
    expected_services,
    is_setting,
    pod_labels,
    port_of,
    quantity,
    selects,
    settings_from,
)

# The oldest Kubernetes we support (docs/operations.md) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
RENDERERS = ("ours", "kustomize")
ROLE_ARN = re.compile(r"^arn:aws:iam::[^:]+:role/[\w+=,.@/-]+$")
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
DNS_PORT = 53
BUS_PORTS = {5672, 5671}
DATABASE_PORT = 3306
HTTPS_PORT = 443
# ConfigMap keys that are not ReClo's settings but read by its libraries (botocore).
LIBRARY_VARIABLES = {"AWS_REGION"}
# The settings production must be given before its first deployment (docs/operations.md):
# the recovery environment in the customer's AWS account, which no default can guess.
PROD_PLACEHOLDERS = {"RECLO_INSTANCES__SUBNET_ID", "RECLO_INSTANCES__GATEWAY_SUBNET_ID",
                     "RECLO_INSTANCES__GATEWAY_IMAGE_ID"}


@functools.cache
def _render(renderer: str, overlay: str) -> tuple[dict, ...]:
    if renderer == "ours":
        return tuple(kustomize.render(KUSTOMIZATIONS[overlay]))
    return tuple(kustomize.render_with_binary(KUSTOMIZATIONS[overlay], kustomize.binary()))


@pytest.fixture(params=RENDERERS)
def renderer(request) -> str:
    if request.param == "kustomize" and kustomize.binary() is None:
        pytest.skip("neither kustomize nor kubectl is installed: deploy/k8s was rendered by "
                    "tests/deploy/kustomize.py only")
    return request.param


@pytest.fixture(params=list(KUSTOMIZATIONS))
def overlay(request) -> str:
    return request.param


@pytest.fixture
def objects(renderer, overlay) -> list[dict]:
    return [dict(obj) for obj in _render(renderer, overlay)]


def _workloads(objects: list[dict]) -> dict[str, dict]:
    """Deployments by service name, plus the migration Job as "migrate"."""
    found = dict(by_kind(objects, "Deployment"))
    found["migrate"] = by_kind(objects, "Job")["reclo-migrate"]
    return found


# --- validity ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(objects, version, tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
         "-k", version, str(path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(objects) > 20


def test_the_validator_rejects_an_unknown_field(tmp_path):
    """Strict really is strict: a misspelt field fails, so a pass above means something."""
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "x"},
        "spec": {"maxUnavailabel": 1, "selector": {"matchLabels": {"a": "b"}}},
    }))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", str(path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "maxUnavailabel" in result.stdout + result.stderr


def _normalized(objects) -> dict[tuple, dict]:
    """Objects by identity, with the lists a strategic merge may reorder put in order."""

    def sort_lists(node):
        if isinstance(node, dict):
            return {k: sort_lists(v) for k, v in node.items()}
        if isinstance(node, list):
            items = [sort_lists(v) for v in node]
            if items and all(isinstance(i, dict) for i in items):
                return sorted(items, key=lambda i: yaml.safe_dump(i, sort_keys=True))
            return items
        return node

    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): sort_lists(o)
            for o in objects}


def test_our_renderer_agrees_with_kustomize(overlay):
    command = kustomize.binary()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: nothing to compare with")
    ours = _normalized(_render("ours", overlay))
    theirs = _normalized(_render("kustomize", overlay))
    assert sorted(ours) == sorted(theirs)
    for ident in ours:
        assert ours[ident] == theirs[ident], ident


# --- services ---------------------------------------------------------------------------


def test_every_service_has_a_deployment_with_probes_and_limits(objects):
    deployments = by_kind(objects, "Deployment")
    assert set(expected_services()) <= set(deployments)
    for name in expected_services():
        (container,) = containers(deployments[name])
        assert container["name"] == name
        assert container["command"] + container["args"] == ["reclo", "serve", name]
        assert container["ports"] == [{"name": "http", "containerPort": port_of(name)}]
        assert {"readinessProbe", "livenessProbe", "resources"} <= set(container), name
        ready, live = container["readinessProbe"], container["livenessProbe"]
        assert ready["httpGet"] == {"path": "/readyz", "port": "http"}, name
        assert live["httpGet"] == {"path": "/healthz", "port": "http"}, name
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            request = quantity(resources["requests"][kind])
            limit = quantity(resources["limits"][kind])
            assert 0 < request <= limit, (name, kind)


def test_every_service_is_reachable_by_its_name(objects):
    """Service <name> selects the Deployment's pods on its port, and the ConfigMap tells the
    gateway that URL."""
    services = by_kind(objects, "Service")
    deployments = by_kind(objects, "Deployment")
    config = by_kind(objects, "ConfigMap")["reclo-config"]["data"]
    for name in expected_services():
        service = services[name]
        labels = pod_labels(deployments[name])
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"] == [
            {"name": "http", "port": port_of(name), "targetPort": "http"}]
        assert config[f"RECLO_{name.upper()}__HOST"] == "0.0.0.0"
        if name != "gateway":
            assert config[f"RECLO_{name.upper()}__URL"] == f"http://{name}:{port_of(name)}"


def test_one_image_for_every_workload(objects):
    images = {c["image"] for w in _workloads(objects).values() for c in containers(w)}
    assert len(images) == 1, images


def test_the_migration_job_runs_reclo_migrate_with_only_the_database(objects):
    job = by_kind(objects, "Job")["reclo-migrate"]
    (container,) = containers(job)
    assert container["command"] == ["reclo", "migrate"]
    assert "args" not in container
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    secrets = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
    assert secrets == {"reclo-database"}


def test_pods_run_unprivileged_on_a_read_only_root(objects):
    for name, workload in _workloads(objects).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            # Python's tempfile and qemu-img need a writable /tmp; the data dir too.
            for path in ("/tmp", "/var/lib/reclo"):
                volume = volumes[mounts[path]]
                assert "emptyDir" in volume or "ephemeral" in volume, (name, path)


def test_each_workload_gets_only_the_secrets_it_uses(objects):
    configmaps = by_kind(objects, "ConfigMap")
    secrets = by_kind(objects, "Secret")
    for name, workload in _workloads(objects).items():
        (container,) = containers(workload)
        used = set()
        for source in container["envFrom"]:
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets, name
                used.add(source["secretRef"]["name"])
            else:
                assert source["configMapRef"]["name"] in configmaps, name
        assert ("reclo-database" in used) == (name not in WITHOUT_DATABASE), name
        if name != "migrate":
            assert {"reclo-bus", "reclo-internal-key"} <= used, name


# --- secrets and identities ---------------------------------------------------------------


def test_secrets_hold_only_placeholders(objects):
    secrets = by_kind(objects, "Secret")
    keys = set()
    for name, secret in secrets.items():
        values = dict(secret.get("stringData") or {})
        values.update({k: base64.b64decode(v).decode()
                       for k, v in (secret.get("data") or {}).items()})
        assert values, name
        for key, value in values.items():
            assert value == PLACEHOLDER, f"Secret {name} key {key} holds a real-looking value"
            keys.add(key)
    assert keys == {"RECLO_DATABASE_URL", "RECLO_BUS_URL", "RECLO_INTERNAL_KEY",
                    "RECLO_AUTH__SMTP_PASSWORD"}


def test_no_aws_keys_anywhere_irsa_instead(objects):
    text = yaml.safe_dump_all(objects)
    assert "AWS_ACCESS_KEY_ID" not in text
    assert "AWS_SECRET_ACCESS_KEY" not in text
    accounts = by_kind(objects, "ServiceAccount")
    for name, workload in _workloads(objects).items():
        account = accounts[workload["spec"]["template"]["spec"]["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False
        role = (account["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn")
        if name in CALLING_AWS:
            assert role is not None and ROLE_ARN.match(role), (name, role)
        else:
            assert role is None, name


# --- the way in ---------------------------------------------------------------------------


def test_the_ingress_targets_only_the_gateway(objects):
    (ingress,) = by_kind(objects, "Ingress").values()
    backends = [path["backend"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]]
    if "defaultBackend" in ingress["spec"]:
        backends.append(ingress["spec"]["defaultBackend"])
    assert backends
    for backend in backends:
        assert backend["service"]["name"] == "gateway"
        assert backend["service"]["port"] == {"name": "http"}
    assert "LoadBalancer" not in {s["spec"].get("type") for s in
                                  by_kind(objects, "Service").values()}


def _policies(objects, direction: str) -> list[dict]:
    return [p for p in by_kind(objects, "NetworkPolicy").values()
            if direction in p["spec"]["policyTypes"]]


def _selected(policy: dict, labels: dict) -> bool:
    return selects(policy["spec"]["podSelector"], labels)


def test_network_policies_deny_by_default(objects):
    defaults = [p for p in by_kind(objects, "NetworkPolicy").values()
                if p["spec"]["podSelector"] == {}
                and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert defaults, "no default-deny NetworkPolicy"


def test_only_the_gateway_is_reachable_from_outside(objects):
    """Traffic from another namespace, an IP block, or anywhere (a rule without `from`)
    reaches the gateway alone; the services accept only the gateway."""
    workloads = _workloads(objects)
    gateway_labels = pod_labels(workloads["gateway"])
    outside_to = set()
    for policy in _policies(objects, "Ingress"):
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or [{}]
            for peer in peers:
                external = "namespaceSelector" in peer or "ipBlock" in peer or peer == {}
                for name, workload in workloads.items():
                    if not _selected(policy, pod_labels(workload)):
                        continue
                    if external:
                        outside_to.add(name)
                    else:
                        assert selects(peer["podSelector"], gateway_labels), (policy, name)
                        assert not any(selects(peer["podSelector"], pod_labels(w))
                                       for n, w in workloads.items() if n != "gateway")
    assert outside_to == {"gateway"}
    reachable = {name for name, workload in workloads.items()
                 for policy in _policies(objects, "Ingress")
                 if _selected(policy, pod_labels(workload)) and policy["spec"].get("ingress")}
    assert reachable == set(expected_services())


def _egress(objects, labels: dict) -> list[dict]:
    return [rule for policy in _policies(objects, "Egress") if _selected(policy, labels)
            for rule in policy["spec"].get("egress") or []]


def test_each_workload_reaches_only_what_it_needs(objects):
    """DNS everywhere; the broker for every service; the database for the services that
    own tables; HTTPS (AWS) for the services that call AWS; the gateway the services."""
    workloads = _workloads(objects)
    for name, workload in workloads.items():
        rules = _egress(objects, pod_labels(workload))
        ports = {p["port"] for rule in rules for p in rule.get("ports") or []}
        assert all(rule.get("ports") for rule in rules), f"{name} may reach any port"
        assert DNS_PORT in ports, name
        assert (BUS_PORTS <= ports) == (name != "migrate"), name
        assert (DATABASE_PORT in ports) == (name not in WITHOUT_DATABASE), name
        assert (HTTPS_PORT in ports) == (name in CALLING_AWS), name
        expected = {DNS_PORT, *BUS_PORTS, DATABASE_PORT, HTTPS_PORT, "http"}
        assert ports <= expected, (name, ports - expected)
        to_services = [rule for rule in rules if "http" in
                       {p["port"] for p in rule.get("ports") or []}]
        if name != "gateway":
            assert not to_services, name
            continue
        for service in expected_services():
            if service == "gateway":
                continue
            labels = pod_labels(workloads[service])
            assert any(selects(peer.get("podSelector"), labels) and "podSelector" in peer
                       for rule in to_services for peer in rule["to"]), service


# --- recovery workers ---------------------------------------------------------------------


def test_recovery_workers_scale_and_keep_a_budget(objects):
    recovery = by_kind(objects, "Deployment")["recovery"]
    # The autoscaler owns the replica count; an apply must not reset it.
    assert "replicas" not in recovery["spec"]
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["recovery"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "recovery"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    budgets = [b for b in by_kind(objects, "PodDisruptionBudget").values()
               if b["spec"]["selector"]["matchLabels"].items() <= pod_labels(recovery).items()]
    assert len(budgets) == 1
    pod = recovery["spec"]["template"]["spec"]
    scratch = {v["name"]: v for v in pod["volumes"]}["scratch"]
    assert "ephemeral" in scratch or "emptyDir" in scratch
    (container,) = pod["containers"]
    assert {"name": "scratch", "mountPath": "/var/lib/reclo"} in container["volumeMounts"]


# --- settings -----------------------------------------------------------------------------


def _config(objects) -> dict[str, str]:
    return by_kind(objects, "ConfigMap")["reclo-config"]["data"]


def test_the_configmap_holds_only_settings_that_exist(objects, monkeypatch):
    config = _config(objects)
    for variable in config:
        assert is_setting(variable) or variable in LIBRARY_VARIABLES, variable
    settings_from(config, monkeypatch)  # and they parse, as a pod would read them


def test_backups_are_in_s3_and_recovery_works_on_its_scratch_volume(objects, monkeypatch):
    """In a cluster the pods share no disk: the backup store must be S3 (real AWS: no
    endpoint), and the recovery worker's scratch and kept images on its scratch volume."""
    settings = settings_from(_config(objects), monkeypatch)
    assert uses_s3(settings) and settings.s3_endpoint is None
    recovery = by_kind(objects, "Deployment")["recovery"]
    (container,) = containers(recovery)
    scratch = next(Path(m["mountPath"]) for m in container["volumeMounts"]
                   if m["name"] == "scratch")
    for folder in (settings.recovery.scratch_dir, settings.recovery.images_dir):
        assert folder is not None and folder.is_relative_to(scratch), folder
    # A local image is downloaded from the worker that keeps it: with the local target,
    # there is only ever one.
    if "local" in settings.recovery.targets:
        assert by_kind(objects, "HorizontalPodAutoscaler")["recovery"]["spec"][
            "maxReplicas"] == 1


def test_each_overlay_recovers_to_its_target(monkeypatch):
    dev = settings_from(_config(_render("ours", "dev")), monkeypatch)
    assert dev.recovery.targets == ("local",)
    prod_config = _config(_render("ours", "prod"))
    prod = settings_from(prod_config, monkeypatch)
    assert prod.recovery.targets == ("aws",)
    # What only the operator knows is a placeholder, and the documentation says to fill it.
    placeholders = {k for k, v in prod_config.items() if PLACEHOLDER in v}
    assert placeholders == PROD_PLACEHOLDERS
    operations = (REPO / "docs" / "operations.md").read_text()
    for variable in placeholders:
        assert f"`{variable}`" in operations, variable
    assert not [k for k, v in _config(_render("ours", "dev")).items() if PLACEHOLDER in v]


# --- overlays compared --------------------------------------------------------------------


def _replicas(objects) -> dict[str, int]:
    counts = {name: d["spec"].get("replicas", 1)
              for name, d in by_kind(objects, "Deployment").items()}
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["recovery"]
    counts["recovery"] = hpa["spec"]["minReplicas"]
    return counts


def _limits(objects) -> dict[tuple[str, str], object]:
    return {(name, kind): quantity(c["resources"]["limits"][kind])
            for name, d in by_kind(objects, "Deployment").items()
            for c in containers(d) for kind in ("cpu", "memory")}


def test_prod_is_bigger_than_dev():
    dev, prod = _render("ours", "dev"), _render("ours", "prod")
    dev_replicas, prod_replicas = _replicas(dev), _replicas(prod)
    assert all(prod_replicas[n] >= dev_replicas[n] for n in dev_replicas)
    assert sum(prod_replicas.values()) > sum(dev_replicas.values())
    assert all(dev_replicas[n] == 1 for n in dev_replicas)
    dev_limits, prod_limits = _limits(dev), _limits(prod)
    assert all(prod_limits[k] > dev_limits[k] for k in dev_limits)
    hpa = {name: by_kind(o, "HorizontalPodAutoscaler")["recovery"]["spec"]["maxReplicas"]
           for name, o in (("dev", dev), ("prod", prod))}
    assert hpa["prod"] > hpa["dev"]


def test_prod_pins_the_image_and_both_overlays_own_a_namespace():
    for overlay, namespace in (("dev", "reclo-dev"), ("prod", "reclo")):
        objects = _render("ours", overlay)
        assert set(by_kind(objects, "Namespace")) == {namespace}
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
    (image,) = {c["image"] for w in _workloads(list(_render("ours", "prod"))).values()
                for c in containers(w)}
    name, _, tag = image.rpartition(":")
    assert "/" in name and SEMVER.match(tag), image
