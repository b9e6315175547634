"""`python -m services.auth` — the same as `reclo serve auth`."""

from services.cli import main

if __name__ == "__main__":
    main(["serve", "auth"])
