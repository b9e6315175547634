"""How a channel reports a send that did not work."""


class DeliveryError(Exception):
    """A send that failed, in words fit for the customer's delivery list; retried with
    backoff unless ``permanent`` (no retry can fix it: the channel was removed, say)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
