"""Fixtures that start a real PostgreSQL server on a loopback port in a temporary directory."""
