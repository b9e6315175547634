"""`python -m services.scheduler [--migrate]`: this service alone, as `reclo serve scheduler` runs it."""

import sys

from services.scheduler.app import build
from shared.runtime import serve_alone

if __name__ == "__main__":
    sys.exit(serve_alone("scheduler", build))
