"""Instances: the machines recoveries become (EC2 or local), their lifecycle, and the
WireGuard VPN into each user's recovery environment."""
