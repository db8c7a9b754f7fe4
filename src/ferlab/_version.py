"""ferlab's version, the one place it is written (pyproject reads it; ferlab.__version__ gives it)."""
__version__ = "0.1.0"
