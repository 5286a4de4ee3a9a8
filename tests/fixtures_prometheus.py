"""Fixtures that start real Prometheus and Alertmanager servers on loopback ports."""
