"""docker-compose.yml: valid against the pinned Compose Specification schema, every service
there with a health check, started in the right order, configured only by environment
variables that ReClo's settings really read."""

from __future__ import annotations

import copy
import hashlib
import http.server
import importlib.resources
import json
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy.engine import make_url

from shared.objectstore import uses_s3
from tests.deploy.manifests import (
    COMPOSE_FILE,
    REPO,
    WITHOUT_DATABASE,
    expected_services,
    is_setting,
    load_compose,
    port_of,
    settings_from,
)

SCHEMA_PIN = REPO / "deploy" / "schemas" / "compose-spec.sha256"
INFRASTRUCTURE = {"rabbitmq", "mariadb", "moto", "mailpit"}
ONE_SHOT = "migrate"
# Variables that are not ReClo's settings but are read by its libraries (botocore).
LIBRARY_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                     "AWS_ENDPOINT_URL"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def schema() -> dict:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    text = resource.joinpath("compose-spec.json").read_bytes()
    pinned = SCHEMA_PIN.read_text().split()[0]
    assert hashlib.sha256(text).hexdigest() == pinned, (
        "the installed compose-spec schema is not the pinned one (deploy/schemas/README.md)")
    return json.loads(text)


def _reclo_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if name not in INFRASTRUCTURE | {ONE_SHOT}}


def test_compose_file_validates_against_the_pinned_schema(compose, schema):
    jsonschema.validators.validator_for(schema)(schema).validate(compose)


def test_the_schema_rejects_a_misspelt_key(compose, schema):
    """The validation above is strict enough to matter."""
    broken = copy.deepcopy(compose)
    broken["services"]["auth"]["healthchek"] = broken["services"]["auth"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="healthchek"):
        jsonschema.validators.validator_for(schema)(schema).validate(broken)


def test_every_service_is_there_with_a_health_check(compose):
    assert set(compose["services"]) == set(expected_services()) | INFRASTRUCTURE | {ONE_SHOT}
    for name, service in compose["services"].items():
        if name == ONE_SHOT:
            assert "healthcheck" not in service
            assert service["restart"] == "no"
            continue
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name


def test_reclo_services_run_the_image_and_check_readiness(compose):
    images = {svc["image"] for svc in _reclo_services(compose).values()}
    images.add(compose["services"][ONE_SHOT]["image"])
    assert len(images) == 1
    for name, service in _reclo_services(compose).items():
        assert service["build"]["context"] == "."
        assert service["command"] == [name]  # after the image's ENTRYPOINT `reclo serve`
        assert service["read_only"] is True
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert f"'http://127.0.0.1:{port_of(name)}/readyz'" in test[3]
    migrate = compose["services"][ONE_SHOT]
    assert migrate["entrypoint"] + migrate["command"] == ["reclo", "migrate"]


def test_start_order_is_enforced_by_conditions(compose):
    services = compose["services"]
    reclo = _reclo_services(compose)
    assert services[ONE_SHOT]["depends_on"] == {"mariadb": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            expected = ("service_completed_successfully" if dependency == ONE_SHOT
                        else "service_healthy")
            assert rule == {"condition": expected}, (name, dependency)
    for name, service in reclo.items():
        needs = set(service["depends_on"])
        assert "rabbitmq" in needs, name
        if name != "gateway":
            assert {ONE_SHOT, "moto"} <= needs, name
    assert set(services["gateway"]["depends_on"]) >= set(reclo) - {"gateway"}
    # And the order exists: no cycle.
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on") or {}) <= set(order)]
        assert ready, f"a depends_on cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        for n in ready:
            del pending[n]
    assert order[-1] == "gateway"


def test_only_the_gateway_the_broker_ui_s3_and_the_mail_ui_are_published_on_loopback(compose):
    """S3 too: agents on the developer's machine upload to it directly."""
    published = {name: svc["ports"] for name, svc in compose["services"].items()
                 if svc.get("ports")}
    assert set(published) == {"gateway", "rabbitmq", "moto", "mailpit"}
    assert published["mailpit"] == ["127.0.0.1:8025:8025"]
    assert published["gateway"] == ["127.0.0.1:8080:8080"]
    assert "127.0.0.1:15672:15672" in published["rabbitmq"]
    assert published["moto"] == ["127.0.0.1:5000:5000"]
    for ports in published.values():
        assert all(p.startswith("127.0.0.1:") for p in ports)


def test_data_lives_in_named_volumes(compose):
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name} mounts {source}, not a named volume"
            used.add(source)
    assert used == declared
    assert {"mariadb-data", "rabbitmq-data"} <= used


def test_configuration_is_only_environment_variables_that_exist(compose):
    for name, service in {**_reclo_services(compose),
                          ONE_SHOT: compose["services"][ONE_SHOT]}.items():
        assert "env_file" not in service and "configs" not in service, name
        for variable in service["environment"]:
            assert is_setting(variable) or variable in LIBRARY_VARIABLES, variable
    assert not is_setting("RECLO_AUTH__NO_SUCH_THING")


def test_the_environment_wires_each_service_to_its_own_database(compose, monkeypatch):
    """The settings a container builds from compose's environment: listening on every
    interface, its own database on the mariadb service, the others by their names."""
    settings = settings_from(compose["services"]["gateway"]["environment"], monkeypatch)
    for name in expected_services():
        assert settings.section(name).host == "0.0.0.0"
        assert settings.port_for(name) == port_of(name)
        if name != "gateway":
            assert settings.url_for(name) == f"http://{name}:{port_of(name)}"
        if name not in WITHOUT_DATABASE:
            url = make_url(settings.database_url_for(name))
            assert (url.host, url.database) == ("mariadb", f"reclo_{name}")
    assert make_url(settings.bus_url.get_secret_value()).host == "rabbitmq"


def test_backups_and_recoveries_are_configured_for_development(compose, monkeypatch):
    """Each service's own environment, read as its container reads it: backups in moto's
    S3 under URLs the host's agents reach, local recoveries on the recovery volume, the
    EC2 API on moto, and settings the recovery service reads from the backup's agree."""
    services = compose["services"]
    built = {name: settings_from(services[name]["environment"], monkeypatch)
             for name in _reclo_services(compose)}
    for name, settings in built.items():
        assert uses_s3(settings), name
        assert settings.s3_endpoint == "http://moto:5000", name
    assert built["recovery"].backup == built["backup"].backup.model_copy(
        update={"presign_endpoint": None})

    presign = built["backup"].backup.presign_endpoint
    host_port = presign.removeprefix("http://")
    assert any(p.rsplit(":", 1)[0] == host_port for p in services["moto"]["ports"]), presign

    recovery = built["recovery"].recovery
    assert recovery.targets == ("local",) and recovery.kms_enabled is False
    (volume,) = services["recovery"]["volumes"]
    mount = Path(volume.split(":")[1])
    for folder in (recovery.scratch_dir, recovery.images_dir):
        assert folder.is_relative_to(mount), folder

    instances = built["instances"].instances
    assert instances.ec2_endpoint == "http://moto:5000" and not instances.qemu_enabled


def test_development_values_are_marked_as_such():
    text = COMPOSE_FILE.read_text()
    assert "DEVELOPMENT ONLY" in text
    assert "-dev-only" in load_compose()["services"]["mariadb"]["environment"][
        "MARIADB_PASSWORD"]


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (the standard library's name)
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_the_health_check_command_fails_on_an_unready_service(compose, status, healthy):
    """Run the gateway's health-check command (Python's urllib, as the image has no curl)
    against a server answering ``status``: healthy only on 200."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    server.status = status
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _, python, flag, code = compose["services"]["gateway"]["healthcheck"]["test"]
        code = code.replace("127.0.0.1:8080", f"127.0.0.1:{server.server_address[1]}")
        result = subprocess.run([sys.executable, flag, code], capture_output=True,
                                timeout=30, check=False, cwd=Path("/"))
    finally:
        server.shutdown()
        server.server_close()
    assert python == "python"
    assert (result.returncode == 0) == healthy, result.stderr
