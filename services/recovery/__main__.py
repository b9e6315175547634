"""`python -m services.recovery` — the same as `reclo serve recovery`."""

from services.cli import main

if __name__ == "__main__":
    main(["serve", "recovery"])
