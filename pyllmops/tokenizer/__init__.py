"""pyllmops.tokenizer: fast byte-level BPE (C++ core in csrc/bpe), a drop-in for tiktoken.

    import pyllmops.tokenizer as tiktoken           # existing tiktoken code runs unchanged
    enc = tiktoken.get_encoding("cl100k_base")     # or encoding_for_model("gpt-4o")
    enc = tiktoken.Encoding(name, pat_str=..., mergeable_ranks=..., special_tokens=...)
    enc = load_hf_tokenizer("tokenizer.json")      # byte-level BPE with merges
    enc = load_gguf("model.gguf")                  # the tokenizer inside a GGUF model
    enc = train_bpe(texts, vocab_size=8192)
    ids = enc.encode(text); text = enc.decode(ids)
"""
from pyllmops.tokenizer.encoding import DisallowedSpecialTokenError, Encoding, RegexFallbackWarning
from pyllmops.tokenizer.loaders import load_gguf, load_hf_tokenizer, load_tiktoken
from pyllmops.tokenizer.model import encoding_for_model, encoding_name_for_model
from pyllmops.tokenizer.registry import get_encoding, list_encoding_names, tiktoken_file
from pyllmops.tokenizer.train import train_bpe

__all__ = [
    "DisallowedSpecialTokenError", "Encoding", "RegexFallbackWarning", "encoding_for_model",
    "encoding_name_for_model", "get_encoding", "list_encoding_names", "load_gguf", "load_hf_tokenizer",
    "load_tiktoken", "tiktoken_file", "train_bpe",
]
