"""A third party's input format works with every builtin head, and defaults come from the registry.

Heads receive the input-format object and size their input by its ``num_sequences``, not by
its name: a two-sentence format registered under a name mtbert has never heard of must give
the pair heads two feature sets of the right width. Which format and head a task gets when
the recipe names none is declared by the components themselves (``default_for``), so a
plugin can take over a default and two plugins claiming the same one are a recipe error.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import pytest
import torch

from mtbert.api import Batch, EncodedExamples, Features, hookimpl, pad_batch
from mtbert.errors import RecipeError
from mtbert.recipe import validate
from mtbert.testing import (
    TINY_HIDDEN, TINY_TASKS, check_head, check_input_format, run_tiny_recipe, tiny_batch, tiny_model,
    tiny_plugins, tiny_recipe_table,
)


@attrs.define
class ReversedPair:
    """Each sentence encoded on its own, the second first: a format with a name mtbert does not know."""

    num_sequences = 2

    def check(self, task: Any) -> str | None:
        return None if task.input_kind == "pair" else "needs sentence pairs"

    def encode_examples(self, tokenizer: Any, examples: Sequence[Any], max_length: int) -> EncodedExamples:
        slots = [tokenizer.encode([e.texts[k] for e in examples], max_length=max_length) for k in (1, 0)]
        return EncodedExamples(ids=[e.id for e in examples], sequences=slots, type_ids=[None, None],
                               labels=[e.label for e in examples])

    def collate(self, encoded: EncodedExamples, indices: Sequence[int], task: str, label_dtype: torch.dtype) -> Batch:
        inputs = {}
        for k in (0, 1):
            inputs.update({f"{key}_{k}": value for key, value in pad_batch([encoded.sequences[k][i] for i in indices]).items()})
        labels = [encoded.labels[i] for i in indices]
        return Batch(task=task, inputs=inputs, labels=None if None in labels else torch.tensor(labels, dtype=label_dtype),
                     ids=[encoded.ids[i] for i in indices])

    def sequences(self, batch: Batch) -> list[dict[str, torch.Tensor]]:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        return [{key: batch.inputs[f"{key}_{k}"] for key in keys} for k in (0, 1)]

    def encode(self, encoder: Any, batch: Batch, inputs_embeds: tuple[torch.Tensor, ...] | None = None) -> Features:
        outs = []
        for k, seq in enumerate(self.sequences(batch)):
            if inputs_embeds is None:
                outs.append(encoder(**seq))
            else:
                outs.append(encoder(attention_mask=seq["attention_mask"], token_type_ids=seq["token_type_ids"],
                                    inputs_embeds=inputs_embeds[k]))
        return Features(hidden=tuple(o.last_hidden_state for o in outs),
                        masks=tuple(s["attention_mask"] for s in self.sequences(batch)),
                        pooled=tuple(o.pooler_output for o in outs))


class ReversedPairPlugin:
    @hookimpl
    def mtbert_register_input_formats(self, register):
        register("reversed-pair", ReversedPair)


@attrs.define
class ClaimsPairs(ReversedPair):
    """The same format, declaring itself the default for pair tasks."""

    default_for = ("pair",)


class ClaimingPlugin:
    @hookimpl
    def mtbert_register_input_formats(self, register):
        register("claims-pairs", ClaimsPairs)


@pytest.fixture(scope="module")
def plugins():
    return tiny_plugins(("reversed-pair", ReversedPairPlugin()))


def test_the_third_party_format_keeps_the_input_format_contract(plugins):
    check_input_format(ReversedPair, name="reversed-pair", plugins=plugins)


@pytest.mark.parametrize("head", ["linear", "mlp", "cosine", "pair-classifier"])
def test_builtin_heads_take_its_width_from_num_sequences(plugins, head):
    model = tiny_model(heads={"tiny_similarity": head}, input_formats={"tiny_similarity": "reversed-pair"},
                       plugins=plugins, tasks=["tiny_similarity"])
    module = model.heads["tiny_similarity"]
    linear = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if head == "linear":  # u, v, |u - v|, u * v of two sequences, not one pooled sequence
        assert linear[0].in_features == 4 * TINY_HIDDEN
    batch = tiny_batch("tiny_similarity", size=3, input_format=model.input_formats["tiny_similarity"])
    assert model(batch).shape == (3,)
    check_head(plugins.registry.find("head", head).factory, name=head, plugins=plugins)


def test_recipes_accept_it_for_pair_heads_and_train(plugins, tmp_path):
    table = tiny_recipe_table()
    table["tasks"]["tiny_similarity"] = {"input": "reversed-pair", "head": "cosine"}
    table["tasks"]["tiny_paraphrase"] = {"input": "reversed-pair", "head": "pair-classifier"}
    recipe = validate(table, plugins)
    assert recipe.tasks["tiny_similarity"].input.name == "reversed-pair"
    folder, summary = run_tiny_recipe(plugins, tmp_path / "run", table=table)
    assert summary["last"]["epoch"] == 1 and all(torch.isfinite(torch.tensor(v)) for v in summary["last"].values()
                                                   if isinstance(v, float))
    one_sequence = tiny_recipe_table()
    one_sequence["tasks"]["tiny_similarity"] = {"input": "concat-pair", "head": "cosine"}
    with pytest.raises(RecipeError, match="tasks.tiny_similarity.head: 'cosine' cannot serve .* this one gives 1"):
        validate(one_sequence, tiny_plugins())


def test_defaults_come_from_the_components_that_declare_them(plugins):
    recipe = validate(tiny_recipe_table(), plugins)
    kinds = {name: TINY_TASKS[name].input_kind for name in recipe.tasks}
    assert {name: (t.input.name, t.head.name) for name, t in recipe.tasks.items()} == {
        name: ("single" if kind == "single" else "separate-pair", "linear") for name, kind in kinds.items()}
    assert [c.name for c in plugins.registry.defaults("input_format", "pair")] == ["separate-pair"]
    assert [c.name for c in plugins.registry.defaults("head", "single")] == ["linear"]


def test_two_components_claiming_one_default_are_a_recipe_error_naming_both(tmp_path):
    claiming = tiny_plugins(("claims-pairs", ClaimingPlugin()))
    table = tiny_recipe_table()
    with pytest.raises(RecipeError) as info:
        validate(table, claiming)
    text = str(info.value)
    assert "tasks.tiny_paraphrase.input: several input formats declare themselves the default for pair tasks" in text
    assert "'claims-pairs' from plugin 'claims-pairs'" in text and "'separate-pair' from plugin 'inputs'" in text
    # naming the format in the recipe settles it
    for name in ("tiny_paraphrase", "tiny_similarity"):
        table["tasks"][name] = {"input": "claims-pairs"}
    assert validate(table, claiming).tasks["tiny_paraphrase"].input.name == "claims-pairs"


def test_mtbert_plugins_shows_which_components_are_defaults():
    from click.testing import CliRunner

    from mtbert.cli import cli

    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ") and line.split()}
    assert lines["separate-pair"].endswith("(default for pair tasks)")
    assert lines["single"].endswith("(default for single tasks)")
    assert lines["linear"].endswith("(default for single and pair tasks)")
    assert "default for" not in lines["concat-pair"] and "default for" not in lines["mlp"]
