"""The drills read backups the way recoveries do: the same moto behind a slow line (a
drill's reading of a small disk takes a few seconds on it), the same AWS test credentials
and stack lifetimes."""

from tests.recovery.conftest import aws_credentials, lifetimes, slow_s3  # noqa: F401
