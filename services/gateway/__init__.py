"""Gateway: the one REST surface under /api/v1, proxied to the services that own each
resource, with callers authenticated here and vouched for to the services by signature."""
