"""The REST models of /api/v1, shared by the services that serve them and the clients that
call them (client-safe: pydantic only)."""
