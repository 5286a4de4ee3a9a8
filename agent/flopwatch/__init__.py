"""flopwatch: continuous GPU efficiency monitoring."""

__version__ = "0.1.0"
