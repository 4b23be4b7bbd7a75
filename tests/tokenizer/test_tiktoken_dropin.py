"""`import pyllmops.tokenizer as tiktoken`: every public item of tiktoken.Encoding (0.14) gives
tiktoken's result, or raises tiktoken's exception type, on random input (hypothesis), for
cl100k_base and o200k_base as pyllmops.tokenizer.get_encoding builds them."""
import copy
import inspect
import pickle

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.tokenizer import _data, _dropin  # noqa: E402
from tests.tokenizer._dropin import SETTINGS, same, texts, token_lists  # noqa: E402

import pyllmops.tokenizer as tk  # noqa: E402

PUBLIC = ["encode", "encode_ordinary", "encode_batch", "encode_ordinary_batch", "encode_with_unstable",
          "encode_single_token", "encode_to_numpy", "decode", "decode_bytes", "decode_single_token_bytes",
          "decode_tokens_bytes", "decode_with_offsets", "decode_batch", "decode_bytes_batch", "token_byte_values",
          "is_special_token", "_encode_bytes", "__init__"]


def _pair(name):
    ref = _data.tiktoken_cl100k() if name == "cl100k_base" else _data.tiktoken_o200k()
    if ref is None:
        pytest.skip(f"no {name} file for tiktoken")
    return tk.get_encoding(name), ref


@pytest.fixture(scope="module", params=["cl100k_base", "o200k_base"])
def pair(request):
    return _pair(request.param)


@pytest.fixture(scope="module")
def valid(pair):
    return _dropin.valid_ids(pair[1])


def test_signatures_match_tiktoken():
    """Same parameter names, kinds and defaults for every public method."""
    import tiktoken

    for m in PUBLIC:
        ours, ref = inspect.signature(getattr(tk.Encoding, m)), inspect.signature(getattr(tiktoken.Encoding, m))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in ref.parameters.values()], m
    for f in ["get_encoding", "list_encoding_names", "encoding_for_model", "encoding_name_for_model"]:
        assert list(inspect.signature(getattr(tk, f)).parameters) == list(inspect.signature(getattr(tiktoken, f)).parameters)


def test_properties(pair):
    ours, ref = pair
    for attr in ["name", "n_vocab", "max_token_value", "eot_token", "special_tokens_set", "_pat_str",
                 "_special_tokens", "_mergeable_ranks"]:
        got, want = getattr(ours, attr), getattr(ref, attr)
        if attr == "name":
            want = want.replace("_offline", "")
        assert type(got) is type(want) and got == want, attr
    assert ours.split == {"cl100k_base": "cl100k", "o200k_base": "o200k"}[ours.name]
    assert ours.token_byte_values() == ref.token_byte_values()
    for t in [0, 1, ref.eot_token, *ref._special_tokens.values(), ref.max_token_value - 1]:
        assert ours.is_special_token(t) == ref.is_special_token(t)
    same(lambda: ours.is_special_token(1.0), lambda: ref.is_special_token(1.0))


@SETTINGS
@given(text=texts())
def test_encode_variants(pair, text):
    """Random text (lone surrogates and special-token strings included) through every encode
    variant with the default policy, allowed "all", and disallowed ()."""
    ours, ref = pair
    for kw in [{}, {"allowed_special": "all"}, {"disallowed_special": ()}]:
        same(lambda: ours.encode(text, **kw), lambda: ref.encode(text, **kw), f"encode {kw}")
        same(lambda: ours.encode_to_numpy(text, **kw), lambda: ref.encode_to_numpy(text, **kw), f"encode_to_numpy {kw}")
    # The completions of a trailing space are most of the vocabulary (~1 s each); the other
    # policies go through encode_with_unstable in test_special_token_matrix.
    same(lambda: ours.encode_with_unstable(text), lambda: ref.encode_with_unstable(text), "encode_with_unstable")
    same(lambda: ours.encode_ordinary(text), lambda: ref.encode_ordinary(text), "encode_ordinary")
    raw = text.encode("utf-8", "surrogatepass")
    same(lambda: ours._encode_bytes(raw), lambda: ref._encode_bytes(raw), "_encode_bytes")
    same(lambda: ours._encode_bytes(raw[:-1]), lambda: ref._encode_bytes(raw[:-1]), "_encode_bytes cut")


@SETTINGS
@given(batch=st.lists(texts(), max_size=6), threads=st.sampled_from([1, 2, 8]))
def test_encode_batch_variants(pair, batch, threads):
    ours, ref = pair
    for kw in [{}, {"allowed_special": "all"}, {"disallowed_special": ()}]:
        same(lambda: ours.encode_batch(batch, num_threads=threads, **kw),
             lambda: ref.encode_batch(batch, num_threads=threads, **kw), f"encode_batch {kw}")
    same(lambda: ours.encode_ordinary_batch(batch, num_threads=threads),
         lambda: ref.encode_ordinary_batch(batch, num_threads=threads), "encode_ordinary_batch")


@SETTINGS
@given(data=st.data())
def test_decode_variants(pair, valid, data):
    """Random valid token lists through every decode variant, offsets included."""
    ours, ref = pair
    tokens = data.draw(token_lists(valid))
    for errors in ["replace", "strict", "ignore"]:
        same(lambda: ours.decode(tokens, errors=errors), lambda: ref.decode(tokens, errors=errors), f"decode {errors}")
    same(lambda: ours.decode(tokens), lambda: ref.decode(tokens), "decode")
    same(lambda: ours.decode_bytes(tokens), lambda: ref.decode_bytes(tokens), "decode_bytes")
    same(lambda: ours.decode_tokens_bytes(tokens), lambda: ref.decode_tokens_bytes(tokens), "decode_tokens_bytes")
    same(lambda: ours.decode_with_offsets(tokens), lambda: ref.decode_with_offsets(tokens), "decode_with_offsets")
    for t in tokens[:5]:
        same(lambda: ours.decode_single_token_bytes(t), lambda: ref.decode_single_token_bytes(t), "single")
    batch = [tokens, tokens[::2], []]
    same(lambda: ours.decode_batch(batch), lambda: ref.decode_batch(batch), "decode_batch")
    same(lambda: ours.decode_batch(batch, errors="strict"), lambda: ref.decode_batch(batch, errors="strict"))
    same(lambda: ours.decode_bytes_batch(batch), lambda: ref.decode_bytes_batch(batch), "decode_bytes_batch")


@SETTINGS
@given(text=texts(surrogates=False))
def test_decode_offsets_of_encoded_text(pair, text):
    """decode_with_offsets on the ids of real text (valid UTF-8, tokens cutting characters)."""
    ours, ref = pair
    ids = ref.encode_ordinary(text)
    same(lambda: ours.decode_with_offsets(ids), lambda: ref.decode_with_offsets(ids))


@pytest.mark.parametrize("tokens", [[-1], [2**32], [2**64], [10**6], ["1"], [1.0], "abc", [None]])
def test_decode_bad_ids(pair, tokens):
    ours, ref = pair
    for m in ["decode", "decode_bytes", "decode_tokens_bytes", "decode_with_offsets"]:
        same(lambda: getattr(ours, m)(tokens), lambda: getattr(ref, m)(tokens), f"{m}({tokens!r})")
    same(lambda: ours.decode_single_token_bytes(tokens[0]), lambda: ref.decode_single_token_bytes(tokens[0]))


_TEXT = "a<|endoftext|>b <|fim_prefix|><|endofprompt|>\n<|endoftext|><|endoftext|> <|nope|> banana"
_ALLOWED = [set(), frozenset(), "all", {"<|endoftext|>"}, {"<|endofprompt|>", "<|fim_prefix|>"}, {"banana"},
            ["<|endoftext|>"], {1}]
_DISALLOWED = ["all", (), set(), {"<|endoftext|>"}, frozenset({"<|endofprompt|>"}), ["<|fim_prefix|>"], {"banana"},
               {""}, "<|"]


@pytest.mark.parametrize("allowed", _ALLOWED, ids=repr)
@pytest.mark.parametrize("disallowed", _DISALLOWED, ids=repr)
def test_special_token_matrix(pair, allowed, disallowed):
    """Every combination of allowed_special and disallowed_special, on text with and without
    special tokens, through every method that takes them: same ids or same exception type."""
    ours, ref = pair
    kw = {"allowed_special": allowed, "disallowed_special": disallowed}
    for text in [_TEXT, "plain text", "", "x\ud800<|endoftext|>"]:
        for m in ["encode", "encode_to_numpy", "encode_with_unstable"]:
            same(lambda: getattr(ours, m)(text, **kw), lambda: getattr(ref, m)(text, **kw), f"{m} {text!r}")
        same(lambda: ours.encode_batch([text, "ok"], **kw), lambda: ref.encode_batch([text, "ok"], **kw))


def test_encode_single_token_first_10000(pair):
    """encode_single_token on the bytes (and, where they are UTF-8, the str) of ids 0..9999, the
    special tokens, and text that is no token."""
    ours, ref = pair
    checked = 0
    for t in range(10_000):
        b = ref.decode_single_token_bytes(t)
        assert ours.encode_single_token(b) == t
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert ours.encode_single_token(s) == ref.encode_single_token(s) == t
        checked += 1
    assert checked > 5000
    for s, t in ref._special_tokens.items():
        assert ours.encode_single_token(s) == t == ours.encode_single_token(s.encode())
    for bad in ["not one token at all", b"\xff\xfe\xfd\xfc", "", bytearray(b"a"), 5, "\ud800"]:
        same(lambda: ours.encode_single_token(bad), lambda: ref.encode_single_token(bad), repr(bad))


def test_pickle_and_copy(pair):
    ours, ref = pair
    # A registered encoding pickles by name, as tiktoken's; both come back equal.
    blob = pickle.dumps(ours)
    assert len(blob) < 200
    back = pickle.loads(blob)
    text = "pickled <|endoftext|> text \ud800"
    assert back.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    # A constructed one pickles its definition.
    built = tk.Encoding("built", pat_str=ref._pat_str, mergeable_ranks=ref._mergeable_ranks,
                        special_tokens=ref._special_tokens)
    for clone in [pickle.loads(pickle.dumps(built)), copy.copy(built), copy.deepcopy(built), copy.copy(ours)]:
        assert clone.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
        assert clone.name in ("built", ours.name) and clone.n_vocab == ref.n_vocab
