"""`python -m services.instances` — the same as `reclo serve instances`."""

from services.cli import main

if __name__ == "__main__":
    main(["serve", "instances"])
