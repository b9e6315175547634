"""`python -m services.scheduler` — the same as `reclo serve scheduler`."""

from services.cli import main

if __name__ == "__main__":
    main(["serve", "scheduler"])
