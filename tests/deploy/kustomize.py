"""Rendering deploy/k8s: with the kustomize binary (or ``kubectl kustomize``) where one is
installed, else with the small renderer here.

The renderer knows exactly the part of kustomize that our kustomizations use — resources
(files and bases), strategic-merge patches targeted by kind and name, namespace, images —
and refuses anything else, so a kustomization that outgrows it fails loudly instead of
rendering something kustomize would not. Where the binary exists the tests render both
ways and compare.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED_FIELDS = frozenset({"apiVersion", "kind", "resources", "patches", "namespace",
                              "images"})
# The only cluster-scoped kind we ship; every other object gets the namespace.
CLUSTER_SCOPED = frozenset({"Namespace"})

# Strategic merge: these lists merge item by item on the key (Kubernetes' patchMergeKey);
# every other list in a patch replaces the original one whole (an atomic list).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
}
# Lists that merge in Kubernetes on a key that depends on where they are (container ports
# on containerPort, Service ports on port): not implemented, so a patch may not touch them.
UNSUPPORTED_LISTS = frozenset({"ports"})


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def render(directory: Path) -> list[Manifest]:
    directory = Path(directory)
    kustomization = _load_kustomization(directory)
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        objects.extend(_resource(directory, entry))
    for patch in kustomization.get("patches", []):
        _apply_patch_file(objects, directory, patch)
    if namespace := kustomization.get("namespace"):
        _set_namespace(objects, namespace)
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    _check_unique(objects)
    return objects


def _load_kustomization(directory: Path) -> dict[str, Any]:
    path = directory / KUSTOMIZATION
    data = yaml.safe_load(path.read_text())
    if data.get("kind") != "Kustomization":
        raise Unsupported(f"{path}: not a Kustomization")
    unknown = set(data) - SUPPORTED_FIELDS
    if unknown:
        raise Unsupported(f"{path}: fields the test renderer does not implement: "
                          f"{sorted(unknown)}")
    return data


def _documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _resource(directory: Path, entry: str) -> list[Manifest]:
    if "://" in entry or entry.startswith("github.com/"):
        raise Unsupported(f"remote resource {entry}")
    path = (directory / entry).resolve()
    if path.is_dir():
        return render(path)
    return _documents(path)


def _apply_patch_file(objects: list[Manifest], directory: Path, entry: dict) -> None:
    if set(entry) != {"path"}:
        raise Unsupported(f"patch entry {entry}: only `path:` patches are implemented")
    for patch in _documents(directory / entry["path"]):
        kind, name = patch["kind"], patch["metadata"]["name"]
        targets = [obj for obj in objects
                   if obj["kind"] == kind and obj["metadata"]["name"] == name]
        if len(targets) != 1:
            raise ValueError(f"patch {entry['path']}: {len(targets)} objects are "
                             f"{kind}/{name}")
        merged = strategic_merge(targets[0], patch)
        targets[0].clear()
        targets[0].update(merged)


def strategic_merge(original: Any, patch: Any, key: str | None = None) -> Any:
    """``patch`` merged into ``original``: maps recursively, a null deletes the key, keyed
    lists item by item, other lists replaced."""
    if isinstance(patch, dict) and isinstance(original, dict):
        if any(k.startswith("$") for k in patch):
            raise Unsupported(f"patch directive in {sorted(patch)}")
        merged = copy.deepcopy(original)
        for k, value in patch.items():
            if value is None:
                merged.pop(k, None)
            elif k in merged:
                merged[k] = strategic_merge(merged[k], value, k)
            else:
                merged[k] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and isinstance(original, list):
        if key in UNSUPPORTED_LISTS:
            raise Unsupported(f"a patch of the keyed list {key!r}")
        merge_key = MERGE_KEYS.get(key or "")
        if merge_key is None:
            return copy.deepcopy(patch)
        merged = copy.deepcopy(original)
        for item in patch:
            index = next((i for i, old in enumerate(merged)
                          if old.get(merge_key) == item.get(merge_key)), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = strategic_merge(merged[index], item, None)
        return merged
    return copy.deepcopy(patch)


def _set_namespace(objects: list[Manifest], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] in CLUSTER_SCOPED:
            if obj["kind"] == "Namespace" and obj["metadata"]["name"] != namespace:
                # kustomize renames such a Namespace; we only ship matching ones.
                raise Unsupported(f"Namespace {obj['metadata']['name']} != {namespace}")
            continue
        obj["metadata"]["namespace"] = namespace


def _image_name(image: str) -> str:
    """``registry/name:tag@digest`` -> ``registry/name`` (a port's colon is not a tag's)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _set_image(objects: list[Manifest], rule: dict[str, str]) -> None:
    if set(rule) - {"name", "newName", "newTag"}:
        raise Unsupported(f"images entry {rule}")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for k, value in node.items():
                if k in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        _retag(container, rule)
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    for obj in objects:
        visit(obj)


def _retag(container: dict[str, Any], rule: dict[str, str]) -> None:
    image = container.get("image")
    if image is None or _image_name(image) != rule["name"]:
        return
    name = rule.get("newName", rule["name"])
    rest = image[len(rule["name"]):]
    if "newTag" in rule:
        rest = f":{rule['newTag']}"
    container["image"] = name + rest


def _check_unique(objects: list[Manifest]) -> None:
    seen: set[tuple[str, str, str | None, str]] = set()
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        ident = (group, obj["kind"], obj["metadata"].get("namespace"),
                 obj["metadata"]["name"])
        if ident in seen:
            raise ValueError(f"two objects are {ident}")
        seen.add(ident)


def binary() -> list[str] | None:
    """The command that renders a kustomization with the real kustomize, if any is here."""
    if path := shutil.which("kustomize"):
        return [path, "build"]
    if path := shutil.which("kubectl"):
        return [path, "kustomize"]
    return None


def render_with_binary(directory: Path, command: list[str]) -> list[Manifest]:
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
