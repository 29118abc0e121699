"""mtbert-plugin-example: a complete third-party plugin package for mtbert.

It adds one loss combiner, ``dwa`` (Dynamic Weight Average, :mod:`mtbert_plugin_example.dwa`),
advertised in the ``mtbert`` entry-point group by ``pyproject.toml``. Nothing here is imported
by mtbert until plugins load.
"""

__version__ = "0.1.0"
