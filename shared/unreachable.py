"""The botocore (and aiobotocore) errors that mean an AWS endpoint (S3, EC2, KMS, or moto)
did not answer at all: refused, reset, timed out. Trying again later may work, unlike
with an answer (a refusal) or a misconfiguration (a bad certificate, a bug), which
botocore reports otherwise."""

from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

UNREACHABLE = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError,
               ReadTimeoutError)
