"""mtbert: multitask fine-tuning of BERT encoders, extended through pluggy plugins.

Importing mtbert is cheap and loads no plugin: plugins load once, when the CLI starts or when
:func:`mtbert.plugins.get_plugin_manager` is first called.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker plugins use to implement mtbert's hooks: ``@mtbert.hookimpl``.
hookimpl = pluggy.HookimplMarker("mtbert")


def load_backbone(checkpoint: str = "minilm-l6", **options):
    """Load a BERT encoder and its tokenizer: ``encoder, tokenizer = load_backbone("minilm-l6")``.

    ``checkpoint`` is a registered name (``mtbert plugins`` lists them: ``minilm-l6``,
    ``random:tiny``) or a local HF-format BERT folder. Options such as ``hidden_dropout``,
    ``attention_dropout`` and ``attention`` ("sdpa" or "math") are passed to the loader.
    """
    from mtbert.model.backbone import load_backbone as _load

    backbone = _load(checkpoint, **options)
    return backbone.encoder, backbone.tokenizer


def run(recipe, overrides=(), out=None, **options):
    """Train a recipe and return ``(folder, metrics)``: ``mtbert.run("quickstart", ["optim.lr=3e-5"], out="runs/a")``.

    ``recipe``: a recipe file, a shipped recipe's name or a dict of recipe keys. See
    :func:`mtbert.run_api.run` for the options (``resume``, ``plugins``, ``say``, ``progress``).
    """
    from mtbert.run_api import run as _run

    return _run(recipe, overrides, out, **options)


__all__ = ["__version__", "hookimpl", "load_backbone", "run"]
