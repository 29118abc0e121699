"""(d) Tokenization of the 8,544 SST training sentences, and the pre-tokenized dataset cache.

CPU only (tokenization never runs on the accelerator).

* ``test_tokenize_sst``: our ``BertTokenizer.encode`` (WordPiece built from MiniLM's
  vocab.txt on the `tokenizers` library, truncation to 128) against transformers'
  ``BertTokenizerFast`` on the same folder with the same truncation, both returning id lists;
  the outputs are checked equal first. No target in the issue: the reference shows we add
  nothing on top of the Rust tokenizer.
* ``test_load_split_cached``: ``load_split`` of the SST training file with the cache
  (``data.cache``, a hit in ``.mtbert-cache``-style folder) against without it (reading and
  tokenizing): what a run saves per split at start-up. Both read and slice the file; the
  ratio is time(hit) / time(no cache).
"""

from __future__ import annotations

import pytest
import torch

from _bench import measure

CPU = torch.device("cpu")


def test_tokenize_sst(benchmark, tokenizer, sst_train, minilm_dir):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    theirs = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    sentences = [e.texts[0] for e in sst_train]
    assert len(sentences) == 8544

    def ours():
        return tokenizer.encode(sentences, max_length=128)

    def reference():
        return theirs(sentences, truncation=True, max_length=128, padding=False,
                      return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    assert ours() == reference()
    measure(benchmark, ours, device=CPU, reference=reference, reference_name="transformers BertTokenizerFast",
            group="tokenize", info={"sentences": len(sentences), "max_length": 128})


def test_load_split_cached(benchmark, tokenizer, data_dir, tmp_path, monkeypatch):
    from mtbert.engine.batches import TaskData, load_split
    from mtbert_plugins.inputs import SingleSentence
    from mtbert_plugins.tasks_cs224n import SST

    monkeypatch.setenv("MTBERT_CACHE_DIR", str(tmp_path / "cache"))
    path = data_dir / SST.files["train"]

    def load(cache: bool):
        def fn():
            task = TaskData(name="sst", spec=SST, input_format=SingleSentence(), input_format_name="single")
            return load_split(task, "train", path, "data.dir", tokenizer=tokenizer, max_length=128, strict=False,
                              limit=None, warn=lambda m: None, cache=cache)
        return fn

    cold, warm = load(False)(), load(True)()  # the second writes the entry: later calls hit it
    assert warm.encoded.sequences == cold.encoded.sequences
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    measure(benchmark, load(True), device=CPU, reference=load(False), reference_name="load_split without the cache",
            group="data-cache", info={"rows": len(cold.examples), "file": path.name})
