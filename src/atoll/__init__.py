"""atoll: a transactional object database for Python."""

__version__ = "0.1.0"
