"""Per-layer output error of the W4 quantizers on SmolLM2-135M (not a pytest file: run it directly).

    python bench/quality_layer_error.py --layers 2,15,28 --bits 4 [--calib F] [--text F]

Why perplexity differs between methods, one linear at a time: for each chosen decoder layer and
each group of linears sharing an input (q/k/v, o, gate/up, down), the float model's inputs to that
group are captured on the calibration text and on the evaluation text; each method quantizes the
group's weights from the calibration inputs, and the error printed is the relative output error on
the evaluation inputs, sum_i ||X (W_i - Q(W_i))^T||^2 / sum_i ||X W_i^T||^2 (lower is better).
Methods: rtn, awq_scale (AWQ's scale search, then RTN), awq_scale_clip (plus the clip search:
what w4a16-awq does), gptq (act-order, mse ranges, uniform Hessian), awq_scale_then_gptq (what
w4a16-gptq with awq_scale=True does). Every layer sees float inputs here (no sequential
calibration), so the numbers isolate the rounding methods. One JSON object per line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pyllmops.models import load_smollm2
from pyllmops.models.evaluate import calibration_batches
from pyllmops.quant.awq import awq_clip, awq_search_scale
from pyllmops.quant.gptq import Hessian, gptq_int4
from pyllmops.quant.rtn import rtn_int4

GROUPS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o": ("self_attn", ("o_proj",)),
          "gate_up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}
SEARCH_TOKENS = 2048  # w4a16-awq's default awq_tokens


def _inputs(model, layer, batches) -> dict[str, torch.Tensor]:
    """{group: its input rows [T, K]} of model.layers[layer] over the batches."""
    rows: dict[str, list[torch.Tensor]] = {}
    handles = []
    for key, (parent, names) in GROUPS.items():
        lin = getattr(getattr(model.layers[layer], parent), names[0])
        handles.append(lin.register_forward_pre_hook(
            lambda _, args, key=key: rows.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))))
    try:
        with torch.no_grad():
            for b in batches:
                model(b)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v).float() for k, v in rows.items()}


def _methods(ws: list[torch.Tensor], x: torch.Tensor, bits: int, gs: int) -> dict[str, list[torch.Tensor]]:
    """{method: effective weights [N_i, K]} for the weights ws sharing calibration input x [T, K]."""
    def deq(w):
        return rtn_int4(w, gs, bits).dequantize(torch.float32)

    sample = x[torch.linspace(0, x.shape[0] - 1, min(SEARCH_TOKENS, x.shape[0])).long()]
    s = awq_search_scale(sample, ws, gs, bits)
    h = Hessian(x.shape[1])
    h.add(x)
    inv = 1.0 / s.double()
    hs = h.matrix * inv[:, None] * inv[None, :]

    def gptq(w, hess):
        return gptq_int4(w, hess, gs, bits, act_order=True, mse=True).dequantize(torch.float32)

    return {"rtn": [deq(w) for w in ws],
            "awq_scale": [deq(w * s) / s for w in ws],
            "awq_scale_clip": [deq(awq_clip(w * s, sample / s, gs, bits)) / s for w in ws],
            "gptq": [gptq(w, h.matrix) for w in ws],
            "awq_scale_then_gptq": [gptq(w * s, hs) / s for w in ws]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="2,15,28", help="comma-separated decoder layer indices")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--calib", type=Path, default=Path("/usr/share/common-licenses/GPL-2"))
    p.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    args = p.parse_args()
    torch.manual_seed(0)
    model, tok = load_smollm2(dtype=torch.float32, device="cpu")
    calib = calibration_batches(tok, args.calib.read_text())
    held_out = calibration_batches(tok, args.text.read_text(), n_samples=4)
    for layer in (int(v) for v in args.layers.split(",")):
        x_cal, x_eval = _inputs(model, layer, calib), _inputs(model, layer, held_out)
        for key, (parent, names) in GROUPS.items():
            ws = [getattr(getattr(model.layers[layer], parent), n).weight.detach().float() for n in names]
            ref = sum(float((x_eval[key] @ w.t()).pow(2).sum()) for w in ws)
            row = {"layer": layer, "bits": args.bits, "group_size": args.group_size, "linears": key}
            for method, wq in _methods(ws, x_cal[key], args.bits, args.group_size).items():
                row[method] = sum(float((x_eval[key] @ (w - q).t()).pow(2).sum()) for w, q in zip(ws, wq)) / ref
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
