"""`python -m services.gateway`: the gateway alone, as `reclo serve gateway` runs it."""

import sys

from services.gateway.app import build
from shared.runtime import serve_alone

if __name__ == "__main__":
    sys.exit(serve_alone("gateway", build))
