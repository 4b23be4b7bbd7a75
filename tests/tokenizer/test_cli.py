"""`pyllmops tokenize` and `pyllmops train-bpe`."""
import pytest

from pyllmops.cli import main
from tests.tokenizer import _data


def test_tokenize_text_and_decode(cl100k, capsys):
    _, ref = cl100k
    assert main(["tokenize", "--text", "Hello world, 12345!"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == ref.encode("Hello world, 12345!")
    assert main(["tokenize", "--decode", "--text", " ".join(map(str, ids))]) == 0
    assert capsys.readouterr().out == "Hello world, 12345!\n"


def test_tokenize_count_files(cl100k, tmp_path, capsys):
    _, ref = cl100k
    files = []
    for k in range(3):
        f = tmp_path / f"t{k}.txt"
        f.write_text(_data.adversarial_text(k, 500), encoding="utf-8")
        files.append(str(f))
    assert main(["tokenize", "--count", *files]) == 0
    want = sum(len(ref.encode_ordinary(open(f, encoding="utf-8").read())) for f in files)
    assert capsys.readouterr().out.startswith(f"{want} tokens")


def test_tokenize_bad_input(cl100k, capsys):
    assert main(["tokenize", "--decode", "--text", "1 2 x"]) == 2
    assert "integer ids" in capsys.readouterr().err
    assert main(["tokenize", "--decode", "--text", "999999999"]) == 2
    assert "invalid token id" in capsys.readouterr().err
    assert main(["tokenize", "--tiktoken", "/nonexistent.tiktoken", "--text", "a"]) == 2


def test_train_bpe_then_tokenize(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_data.real_text(200_000), encoding="utf-8")
    out = tmp_path / "mine.tiktoken"
    assert main(["train-bpe", str(corpus), "-o", str(out), "--vocab-size", "700"]) == 0
    assert "trained 700 tokens" in capsys.readouterr().out
    from pyllmops.tokenizer import load_tiktoken

    enc = load_tiktoken(out, "cl100k_base")
    assert len(enc.mergeable_ranks()) == 699
    assert main(["tokenize", "--tiktoken", str(out), "--name", "cl100k_base", "--text", "def main():"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert enc.decode(ids) == "def main():"
    with pytest.raises(SystemExit):
        main(["train-bpe", str(corpus)])  # -o is required
