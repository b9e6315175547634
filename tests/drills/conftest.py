import pytest


@pytest.fixture
def aws_credentials(monkeypatch):
    # moto (KMS) accepts any credentials; botocore needs some to sign, and must not find
    # real ones.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def slow_s3(aws_credentials):
    """moto behind a slow line: a drill's reading of the backup takes seconds."""
    from tests import infra
    from tests.support import TcpProxy

    link = await TcpProxy.to(infra.s3_endpoint(), down_rate=SLOW_LINE).start()
    yield link
    await link.stop()


@pytest.fixture
async def lifetimes():
    from tests.recovery.helpers import Lifetimes

    lives = Lifetimes()
    yield lives
    await lives.close()


# A small disk's data (~5 MiB with its filesystem's) takes a few seconds on this line.
SLOW_LINE = 2 << 20
