"""`python -m services.recovery [--migrate]`: this service alone, as `reclo serve recovery` runs it."""

import sys

from services.recovery.app import build
from shared.runtime import serve_alone

if __name__ == "__main__":
    sys.exit(serve_alone("recovery", build))
