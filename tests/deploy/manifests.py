"""What the deployment tests share: where the files are, which services must be deployed,
and small readers of Kubernetes objects (label selectors, resource quantities)."""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from services.registry import names
from shared.settings import DEFAULT_PORTS, Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev",
                  "prod": K8S / "overlays" / "prod"}
COMPOSE_FILE = REPO / "docker-compose.yml"

# DESIGN.md §1: the services the system is made of, deployed even before their code lands.
DESIGNED = ("gateway", "auth", "backup", "recovery", "instances", "scheduler")
# Services without tables of their own: no database Secret, no database egress.
WITHOUT_DATABASE = frozenset({"gateway"})
# Services that call AWS (S3, EC2, KMS): IRSA role and HTTPS egress, and no others.
CALLING_AWS = frozenset({"backup", "recovery", "instances"})
# The id the image runs as (Dockerfile RECLO_UID).
IMAGE_UID = 10001
PLACEHOLDER = "CHANGE_ME"


def service_folders() -> set[str]:
    """Every ``services/<name>/`` that is a service (it has a composition root)."""
    return {path.parent.name for path in (REPO / "services").glob("*/app.py")}


def expected_services() -> list[str]:
    """Registered, present as a folder, or designed: each needs a deployment."""
    return sorted(set(names()) | service_folders() | set(DESIGNED))


def port_of(service: str) -> int:
    return DEFAULT_PORTS[service]


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def is_setting(variable: str) -> bool:
    """Does ``RECLO_A__B`` name a field that Settings reads?"""
    path = variable.removeprefix("RECLO_").lower().split("__")
    model: type[BaseModel] = Settings
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation if isinstance(field.annotation, type) else BaseModel
    return True


def settings_from(environment: dict[str, object], monkeypatch) -> Settings:
    """The Settings a container builds from exactly this environment (no RECLO_* of the
    test's own); raises pydantic's ValidationError as the container would fail to start."""
    for variable in list(os.environ):
        if variable.startswith("RECLO_"):
            monkeypatch.delenv(variable)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, str(value))
    return Settings()


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Does a Kubernetes label selector match these labels? (An empty one matches all.)"""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9,
            "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2``, ``512Mi``) as a number of units."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"not a quantity: {value!r}")
    return Decimal(match.group(1)) * _FACTORS[match.group(2)]


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]
