"""mtbert's version, in a module of its own so that any module can read it without importing the package's
front door (``mtbert/__init__.py``, whose helpers import the engine)."""

__version__ = "0.1.0"
