"""Builtin mtbert plugins; each module is registered through the `mtbert` entry-point group."""
