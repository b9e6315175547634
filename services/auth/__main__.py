"""`python -m services.auth [--migrate]`: this service alone, as `reclo serve auth` runs it."""

import sys

from services.auth.app import build
from shared.runtime import serve_alone

if __name__ == "__main__":
    sys.exit(serve_alone("auth", build))
