"""The version of fastadv, defined once: the package and its build metadata (pyproject.toml) read it."""

__version__ = "0.1.0"
