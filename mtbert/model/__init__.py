"""The encoder (minBERT), its configuration, tokenizer and HF-format weight loading."""

from __future__ import annotations

from mtbert.model.bert import BertEncoder, EncoderOutput
from mtbert.model.config import BertConfig
from mtbert.model.tokenizer import BertTokenizer
from mtbert.model.weights import LoadedBackbone, load_hf_folder

__all__ = ["BertConfig", "BertEncoder", "EncoderOutput", "BertTokenizer", "LoadedBackbone", "load_hf_folder"]
