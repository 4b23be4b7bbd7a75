"""A pyllmops W4A16-GPTQ SmolLM2 (loaded through transformers) saved as compressed-tensors, GPTQ
and AWQ: transformers' own compressed-tensors loader gives the pyllmops model's logits, and the
GPTQ / AWQ directories reload in pyllmops bit-identically (not a pytest file: run it directly).

    python bench/checkpoint_roundtrip.py [--tokens 512] [--calib-samples 16] [--group-size 64]
        [--configs sym,asym,act-order,act-order-static] [--json out.json]

Each config quantizes a fresh copy of the model (pyllmops.quantize(model, "w4a16-gptq", calib=...),
calibration windows of 512 tokens of the default calibration text), computes its logits on the
first --tokens tokens of --text, then for every format the config can be written in:
  compressed-tensors  save_quantized, load with transformers.AutoModelForCausalLM.from_pretrained
                      (compressed-tensors' modules, no pyllmops), compare logits: max abs
                      difference, that over the logits' absmax, top-1 agreement, perplexity of both;
                      also reload in pyllmops (bit-identical expected)
  gptq, awq           save_quantized, pyllmops.load_quantized: every packed buffer (qweight,
                      scales, zeros, g_idx, perm, bias) torch.equal to the in-memory model's, and
                      logits torch.equal
A format that refuses the config (AWQ has no act-order) is recorded with its message. Needs
transformers, gguf, compressed-tensors and accelerate (the bench extra).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

import pyllmops
from pyllmops.formats import FormatError
from pyllmops.models import load_tokenizer, smollm2_path
from pyllmops.models.evaluate import calibration_batches
from pyllmops.nn.weight_only import WeightOnlyLinear

CONFIGS = {  # name: w4a16-gptq options besides group_size
    "sym": {"symmetric": True, "act_order": False},
    "asym": {"symmetric": False, "act_order": False},
    "act-order": {"symmetric": True, "act_order": True},
    "act-order-static": {"symmetric": True, "act_order": True, "static_groups": True},
}
BUFFERS = ("qweight", "scales", "zeros", "g_idx", "perm", "bias", "input_scale")


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def ppl(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return math.exp(float(F.cross_entropy(logits[0, :-1].double(), ids[0, 1:])))


def compare(theirs: torch.Tensor, ours: torch.Tensor, ids: torch.Tensor) -> dict:
    diff = (theirs - ours).abs()
    return {"max_abs_diff": float(diff.max()), "max_abs_diff_over_absmax": float(diff.max() / ours.abs().max()),
            "mean_abs_diff": float(diff.mean()), "bit_identical": bool(torch.equal(theirs, ours)),
            "top1_agreement": float((theirs.argmax(-1) == ours.argmax(-1)).float().mean()),
            "ppl_pyllmops": ppl(ours, ids), "ppl_loaded": ppl(theirs, ids)}


def buffers_equal(model, back) -> dict:
    """Every pyllmops layer's buffers in `back` torch.equal to `model`'s: {"layers": n, "differ": [...]}."""
    differ, n = [], 0
    for name, mod in model.named_modules():
        if not isinstance(mod, WeightOnlyLinear):
            continue
        n += 1
        other = back.get_submodule(name)
        if not isinstance(other, WeightOnlyLinear):
            differ.append(f"{name}: {type(other).__name__}")
            continue
        for b in BUFFERS:
            x, y = getattr(mod, b), getattr(other, b)
            if (x is None) != (y is None) or (x is not None and (x.dtype != y.dtype or not torch.equal(x, y))):
                differ.append(f"{name}.{b}")
    return {"layers": n, "differ": differ}


def run_format(fmt: str, model, ours: torch.Tensor, ids: torch.Tensor, tmp: Path) -> dict:
    import transformers

    out = {"format": fmt}
    path = tmp / fmt
    try:
        pyllmops.save_quantized(model, path, format=fmt)
    except FormatError as e:
        return {**out, "refused": str(e)}
    out["bytes"] = sum(f.stat().st_size for f in path.iterdir())
    back = pyllmops.load_quantized(path)
    out["pyllmops_reload"] = {"buffers": buffers_equal(model, back), **compare(logits_of(back, ids), ours, ids)}
    del back
    if fmt == "compressed-tensors":
        try:
            hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        except Exception as e:  # recorded: which config transformers' loader refuses, and why
            out["transformers"] = {"error": f"{type(e).__name__}: {e}"[:2000],
                                   "traceback_tail": traceback.format_exc()[-1500:]}
        else:
            ours_inside = sum(isinstance(m, WeightOnlyLinear) for m in hf.modules())  # 0: compressed-tensors' own
            out["transformers"] = {"pyllmops_modules": ours_inside, **compare(logits_of(hf, ids), ours, ids)}
            del hf
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import transformers

    path = smollm2_path()
    tok = load_tokenizer(path)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(open(args.text, encoding="utf-8").read())[:args.tokens]])
    calib = calibration_batches(tok, n_samples=args.calib_samples)
    float_ppl = ppl(logits_of(base, ids), ids)
    print(f"float SmolLM2 (transformers): ppl {float_ppl:.3f} on {ids.shape[1]} tokens; {len(calib)} calibration "
          f"windows", flush=True)
    results = []
    for name in args.configs.split(","):
        options = {"group_size": args.group_size, **CONFIGS[name]}
        t0 = time.time()
        model = copy.deepcopy(base)
        pyllmops.quantize(model, "w4a16-gptq", calib=calib, progress=False, **options)
        ours = logits_of(model, ids)
        row = {"config": name, "options": options, "quantize_seconds": time.time() - t0, "ppl": ppl(ours, ids),
               "formats": []}
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("compressed-tensors", "gptq", "awq"):
                r = run_format(fmt, model, ours, ids, Path(tmp))
                row["formats"].append(r)
                print(f"{name:10s} {fmt:18s} {json.dumps({k: v for k, v in r.items() if k != 'format'})[:900]}",
                      flush=True)
        results.append(row)
        del model, ours
        if args.json:  # after every config, so that a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"command": " ".join(["python"] + sys.argv), "date": datetime.date.today().isoformat(),
                           "model": f"SmolLM2-135M-Instruct ({path.name}) through transformers", "text": args.text,
                           "tokens": ids.shape[1], "calib_windows": len(calib), "float_ppl": float_ppl,
                           "configs": results, "torch": torch.__version__, "transformers": transformers.__version__,
                           "compressed_tensors": __import__("compressed_tensors").__version__}, f, indent=2)


if __name__ == "__main__":
    main()
