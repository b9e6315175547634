"""What every service's HTTP side shares: the app factory, declared routes (which also make
the OpenAPI document), problem+json errors and the gateway-signed caller identity."""
