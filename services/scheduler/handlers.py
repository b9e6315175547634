"""The scheduler's event handlers: none. It consumes nothing; its ticks come from the clock
(see ticker.py) and are handled by the services that own the data."""

EVENT_HANDLERS: dict = {}
