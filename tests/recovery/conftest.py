import pytest

from tests import infra
from tests.support import TcpProxy

# A small disk's data (~8 MiB with its filesystem's) takes about four seconds through the
# slow line: time to act mid-download.
SLOW_LINE = 2 << 20


@pytest.fixture
def aws_credentials(monkeypatch):
    # moto accepts any credentials; botocore needs some to sign, and must not find real ones.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def slow_s3(aws_credentials):
    """moto behind a slow line: what recovery reads from S3 trickles in."""
    link = await TcpProxy.to(infra.s3_endpoint(), down_rate=SLOW_LINE).start()
    yield link
    await link.stop()


@pytest.fixture
async def lifetimes():
    """Stacks a test starts (and restarts), all stopped at its end."""
    from tests.recovery.helpers import Lifetimes

    lives = Lifetimes()
    yield lives
    await lives.close()
