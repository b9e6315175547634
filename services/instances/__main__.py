"""`python -m services.instances [--migrate]`: this service alone, as `reclo serve instances` runs it."""

import sys

from services.instances.app import build
from shared.runtime import serve_alone

if __name__ == "__main__":
    sys.exit(serve_alone("instances", build))
