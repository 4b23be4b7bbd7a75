"""pyllmops.tokenizer: fast byte-level BPE (C++ core in csrc/bpe) with tiktoken's API.

    enc = load_tiktoken(path, "cl100k_base")       # or get_encoding("cl100k_base")
    enc = Encoding.from_tiktoken(tiktoken_encoding)
    enc = load_hf_tokenizer("tokenizer.json")      # byte-level BPE with merges
    enc = load_gguf("model.gguf")                  # the tokenizer inside a GGUF model
    enc = train_bpe(texts, vocab_size=8192)
    ids = enc.encode(text); text = enc.decode(ids)
"""
from pyllmops.tokenizer.encoding import DisallowedSpecialTokenError, Encoding
from pyllmops.tokenizer.loaders import get_encoding, load_gguf, load_hf_tokenizer, load_tiktoken, tiktoken_file
from pyllmops.tokenizer.train import train_bpe

__all__ = [
    "DisallowedSpecialTokenError", "Encoding", "get_encoding", "load_gguf", "load_hf_tokenizer", "load_tiktoken",
    "tiktoken_file", "train_bpe",
]
