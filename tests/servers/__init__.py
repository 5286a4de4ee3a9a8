"""Real servers the tests start on loopback, as plain helpers (no pytest): fixtures wrap them."""
