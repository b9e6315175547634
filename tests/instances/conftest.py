import boto3
import pytest

from tests import infra
from tests.harness import MODES
from tests.instances.helpers import MotoNetwork


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """Embedded (SQLite, in-process bus) or MariaDB with RabbitMQ."""
    return request.param


@pytest.fixture
def aws_credentials(monkeypatch):
    # moto takes any credentials; these are its documented dummy values.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def ec2(aws_credentials):
    return boto3.client("ec2", endpoint_url=infra.s3_endpoint(), region_name="us-east-1")


@pytest.fixture
def network(ec2, unique):
    """A VPC of this test's own in moto, with a recovery subnet and the test's images;
    its instances are terminated afterwards."""
    net = MotoNetwork.create(ec2, unique)
    yield net
    net.tear_down()
