"""detkit's version (kept in step with pyproject.toml); importable without importing the package's API."""

__version__ = "0.1.0"
