"""WordPiece tokenizer for BERT checkpoints, built on the `tokenizers` library.

We build the pipeline from ``vocab.txt`` (plus ``tokenizer_config.json`` for casing) rather
than trusting a folder's ``tokenizer.json``: the latter often carries fixed padding and
truncation settings (all-MiniLM-L6-v2 pads everything to 128), and every HF BERT folder has a
vocab file. The result matches transformers' ``BertTokenizerFast`` token for token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from mtbert.errors import CheckpointError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertTokenizer:
    """Uncased or cased WordPiece tokenizer producing unpadded id lists and padded batches.

    Encoding returns plain Python lists (cheap to cache and to bucket by length); ``pad``
    turns a list of encodings into tensors padded to the longest one in the batch.
    """

    def __init__(self, vocab: dict[str, int], *, lowercase: bool = True, strip_accents: bool | None = None):
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise CheckpointError(f"vocabulary lacks special tokens {missing}")
        self.vocab = vocab
        self.lowercase = lowercase
        tok = _HFTokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        tok.decoder = decoders.WordPiece(prefix="##")
        self._tok = tok
        self.pad_id = vocab["[PAD]"]
        self.unk_id = vocab["[UNK]"]
        self.cls_id = cls
        self.sep_id = sep
        self.mask_id = vocab["[MASK]"]
        self.special_ids = frozenset(vocab[t] for t in SPECIAL_TOKENS)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_folder(cls, folder: str | Path) -> "BertTokenizer":
        """Read ``vocab.txt`` and, when present, ``tokenizer_config.json`` from an HF folder."""
        folder = Path(folder)
        vocab_path = folder / "vocab.txt"
        if not vocab_path.is_file():
            raise CheckpointError(f"{folder}: no vocab.txt (an HF-format BERT folder needs one)")
        vocab: dict[str, int] = {}
        with vocab_path.open(encoding="utf-8") as f:
            for index, line in enumerate(f):
                token = line.rstrip("\n")
                if token not in vocab:  # first occurrence wins, as in transformers
                    vocab[token] = index
        lowercase, strip_accents = True, None
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            lowercase = bool(config.get("do_lower_case", True))
            strip_accents = config.get("strip_accents")
        return cls(vocab, lowercase=lowercase, strip_accents=strip_accents)

    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    # ----------------------------------------------------------------- encoding
    def _truncation(self, max_length: int | None) -> None:
        if max_length is None:
            self._tok.no_truncation()
        else:
            self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        self._tok.no_padding()

    def encode(self, texts: Sequence[str], max_length: int | None = 512) -> list[list[int]]:
        """Token ids of single sentences, ``[CLS] a [SEP]``, truncated to ``max_length``."""
        self._truncation(max_length)
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def encode_pairs(
        self, first: Sequence[str], second: Sequence[str], max_length: int | None = 512
    ) -> list[tuple[list[int], list[int]]]:
        """Ids and segment ids of ``[CLS] a [SEP] b [SEP]``, truncating the longer side first."""
        if len(first) != len(second):
            raise ValueError("encode_pairs needs as many second sentences as first ones")
        self._truncation(max_length)
        encodings = self._tok.encode_batch(list(zip(first, second)))
        return [(e.ids, e.type_ids) for e in encodings]

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens without special tokens (for inspection and tests)."""
        self._truncation(None)
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    # ----------------------------------------------------------------- batching
    def pad(
        self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad id lists to the longest in the batch (dynamic padding).

        Returns ``input_ids``, ``attention_mask`` and ``token_type_ids`` as int64 tensors.
        """
        return pad_batch(ids, type_ids, pad_id=self.pad_id)


def pad_batch(
    ids: Sequence[Sequence[int]],
    type_ids: Sequence[Sequence[int]] | None = None,
    *,
    pad_id: int = 0,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad id lists to the longest one (or to ``pad_to``), with the matching masks."""
    length = max((len(x) for x in ids), default=0)
    if pad_to is not None:
        length = max(length, pad_to)
    n = len(ids)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    token_type_ids = torch.zeros((n, length), dtype=torch.long)
    for row, seq in enumerate(ids):
        k = len(seq)
        input_ids[row, :k] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, :k] = 1
        if type_ids is not None:
            token_type_ids[row, :k] = torch.as_tensor(type_ids[row], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
