"""The test renderer's own rules, on small inputs: what it merges, and what it refuses
rather than render differently from kustomize."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.kustomize import Unsupported, render, strategic_merge

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
    "spec": {"replicas": 2, "template": {"spec": {
        "containers": [{"name": "api", "image": "reclo", "args": ["a", "b"],
                        "resources": {"limits": {"cpu": "1"}}},
                       {"name": "side", "image": "registry.local:5000/side:1"}],
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}]}}},
}


def test_maps_merge_keyed_lists_merge_other_lists_replace_and_null_deletes():
    patch = {"spec": {"replicas": 3, "template": {"spec": {
        "containers": [{"name": "api", "args": ["c"], "resources": {"limits": {"memory": "1Gi"}}}],
        "volumes": [{"name": "scratch", "ephemeral": None, "emptyDir": {"sizeLimit": "1Gi"}}]}}}}
    merged = strategic_merge(DEPLOYMENT, patch)
    pod = merged["spec"]["template"]["spec"]
    assert merged["spec"]["replicas"] == 3
    api, side = pod["containers"]
    assert api["args"] == ["c"]
    assert api["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert api["image"] == "reclo" and side["name"] == "side"
    assert pod["volumes"][1] == {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
    assert DEPLOYMENT["spec"]["replicas"] == 2  # the original is left alone


def _kustomization(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}))


def test_an_overlay_renders_its_base_then_patches_namespaces_and_retags(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "app.yaml").write_text(yaml.safe_dump(DEPLOYMENT))
    _kustomization(tmp_path / "base", resources=["app.yaml"])
    (tmp_path / "prod" / "patch.yaml").parent.mkdir()
    (tmp_path / "prod" / "patch.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
         "spec": {"replicas": 5}}))
    _kustomization(tmp_path / "prod", resources=["../base"], namespace="prod",
                   patches=[{"path": "patch.yaml"}],
                   images=[{"name": "reclo", "newName": "r.example/reclo", "newTag": "1.2.3"},
                           {"name": "registry.local:5000/side", "newTag": "2"}])
    (obj,) = render(tmp_path / "prod")
    assert obj["metadata"]["namespace"] == "prod"
    assert obj["spec"]["replicas"] == 5
    images = [c["image"] for c in obj["spec"]["template"]["spec"]["containers"]]
    assert images == ["r.example/reclo:1.2.3", "registry.local:5000/side:2"]


@pytest.mark.parametrize("fields", [
    {"namePrefix": "x-"},
    {"patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]},
    {"resources": ["https://example.com/base"]},
])
def test_what_it_does_not_implement_is_refused(tmp_path, fields):
    _kustomization(tmp_path, **fields)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(DEPLOYMENT))
    with pytest.raises(Unsupported):
        render(tmp_path)


def test_a_patch_must_hit_exactly_one_object(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "missing"}}))
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(DEPLOYMENT))
    _kustomization(tmp_path, resources=["app.yaml"], patches=[{"path": "p.yaml"}])
    with pytest.raises(ValueError, match="0 objects"):
        render(tmp_path)


def test_directives_and_keyed_lists_it_cannot_merge_are_refused():
    with pytest.raises(Unsupported):
        strategic_merge(DEPLOYMENT, {"spec": {"$patch": "replace"}})
    with pytest.raises(Unsupported):
        strategic_merge({"ports": [{"port": 1}]}, {"ports": [{"port": 2}]})
