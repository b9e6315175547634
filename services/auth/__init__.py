"""Auth: users, sessions and agent keys; the gateway asks it who a bearer token belongs to."""
