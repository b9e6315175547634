"""The dependency rules of DESIGN.md §1, checked on the source: services never import each
other, clients never import services or server-only shared code, and the client-safe part
really installs and imports without the server's libraries."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY_SHARED = {"shared.bus", "shared.db", "shared.http", "shared.inbox", "shared.outbox",
                      "shared.runtime", "shared.settings", "shared.logs", "shared.migrations",
                      "shared.pagination", "shared.objectstore"}
SERVER_LIBRARIES = {"sqlalchemy", "aio_pika", "aiormq", "structlog", "pydantic_settings",
                    "alembic", "aiomysql", "aiosqlite", "argon2", "prometheus_client",
                    "boto3", "botocore", "aiobotocore", "croniter"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def python_files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_services_never_import_each_other():
    offenders = []
    services = sorted(p for p in (ROOT / "services").iterdir() if p.is_dir()
                      and (p / "__init__.py").exists())
    names = {p.name for p in services}
    for service in services:
        for path in service.rglob("*.py"):
            for name in imports_of(path):
                parts = name.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] in names \
                        and parts[1] != service.name:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_clients_import_only_client_safe_code():
    files = python_files("clients") + python_files("shared/format") + python_files("shared/api")
    assert files, "no client code found"
    offenders = []
    for path in files:
        for name in imports_of(path):
            top = name.split(".")[0]
            if top == "services" or top in SERVER_LIBRARIES or any(
                    name == m or name.startswith(m + ".") for m in SERVER_ONLY_SHARED):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_plain_install_pulls_no_server_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {req.split("==")[0].split("[")[0].lower().replace("-", "_")
            for req in project["dependencies"]}
    assert base.isdisjoint({lib.lower() for lib in SERVER_LIBRARIES} | {"sqlalchemy", "aio_pika",
                                                                        "pydantic_settings"})
    assert {"reclo", "reclo-agent", "reclo-recover"} <= set(project["scripts"])


def test_client_modules_import_with_server_libraries_blocked():
    """Import every client module in a fresh interpreter where the server libraries
    cannot be imported at all: what a plain `pip install .` gives."""
    modules = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(
        ".__init__") for p in python_files("clients") + python_files("shared/format")
        + python_files("shared/api") if "packaging" not in p.parts and p.name != "__main__.py"})
    program = f"""
import importlib, importlib.abc, sys
BLOCKED = {sorted(SERVER_LIBRARIES)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("server library " + name + " imported by client code")
sys.meta_path.insert(0, Block())
for module in {modules!r}:
    importlib.import_module(module)
print("ok", len({modules!r}))
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")
