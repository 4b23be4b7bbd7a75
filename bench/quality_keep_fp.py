"""Perplexity of SmolLM2-135M when a fraction of each linear's input channels stays in float
(not a pytest file: run it directly; one JSON line per run).

    python bench/quality_keep_fp.py --method awq|rtn --keep 0.01 [--by error|activation] [--bits 4]

The seed's row for AWQ reads "preserves & doesn't quantize all the weights": the AWQ paper starts
from keeping ~1% salient input channels in FP16, then replaces that with per-channel scaling. This
measures how far the mixed-precision version gets on this model, to tell whether the gap between
w4a16-awq and the issue's goal lies in a few channels. For each linear, after the method quantized
it (RTN, or AWQ's scale search + clip exactly as w4a16-awq's defaults), the `keep` fraction of its
input channels with the largest output error E[x_j^2] * ||W_j - Q(W)_j||^2 (--by error) or the
largest mean |x_j| (--by activation, the paper's criterion) get their float weights back, as an
extra dense product on those channels. Layers are calibrated sequentially on the quantized model
(as pyllmops.quantize does), on GPL-2; perplexity on GPL-3 (512-token windows).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from pyllmops.models import load_smollm2
from pyllmops.models.evaluate import calibration_batches, perplexity
from pyllmops.quant.awq import awq_clip
from pyllmops.quant.rtn import rtn_int4
from pyllmops.quant.methods import weight_only as wo
from pyllmops.quant.methods._blocks import resolve_spec


class KeptChannels(nn.Module):
    """A quantized linear plus the float correction on its kept input channels."""

    def __init__(self, inner: nn.Module, cols: torch.Tensor, correction: torch.Tensor):
        super().__init__()
        self.inner, self.cols, self.correction = inner, cols, correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.inner.input_scale
        xi = x if scale is None else x / scale
        return self.inner(x) + xi[..., self.cols] @ self.correction.t()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=("awq", "rtn"), default="awq")
    p.add_argument("--keep", type=float, default=0.01, help="fraction of input channels kept in float")
    p.add_argument("--by", choices=("error", "activation"), default="error")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--calib", type=Path, default=Path("/usr/share/common-licenses/GPL-2"))
    p.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    args = p.parse_args()
    torch.set_num_threads(1)
    gs, bits = args.group_size, args.bits
    model, tok = load_smollm2()
    ids = tok.encode_ordinary(args.text.read_text())
    fp_ppl = perplexity(model, ids, window=512, batch_size=4, progress=False)
    spec = resolve_spec(model, None)
    prefix = {id(b): f"{spec.blocks}.{i}." for i, b in enumerate(model.get_submodule(spec.blocks))}
    kept: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def quantize_group(block, group, sample, done, _inspected):
        x, _ = sample.tensor()
        lins = [block.get_submodule(n) for n in group.linears]
        s, input_scale = (wo._scale_and_fold(block, group, lins, x, None, done, gs, bits, False)
                          if args.method == "awq" else (None, None))
        xs = x if s is None else x / s  # what the (scaled) layers read
        out = {}
        for lin, name in zip(lins, group.linears):
            w = lin.weight.float()
            q = rtn_int4(awq_clip(w, xs, gs, bits, False) if args.method == "awq" else w, gs, bits, False)
            deq = q.dequantize(torch.float32)
            n_keep = round(args.keep * w.shape[1])
            if n_keep:
                score = x.abs().mean(0) if args.by == "activation" else xs.pow(2).mean(0) * (w - deq).pow(2).sum(0)
                cols = score.topk(n_keep).indices
                kept[prefix[id(block)] + name] = (cols, w[:, cols] - deq[:, cols])
                deq[:, cols] = w[:, cols]
            lin.weight.copy_(deq if input_scale is None else deq / input_scale)  # what later layers see
            out[name] = (q, input_scale)
        return out

    t0 = time.perf_counter()
    with torch.no_grad():
        wo._calibrated(model, calibration_batches(tok, args.calib.read_text()), spec, ("lm_head",), False,
                       args.method, lambda k: wo._TokenSample(2048, "uniform"), quantize_group)
    for name, (cols, correction) in kept.items():
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, KeptChannels(getattr(owner, leaf), cols, correction))
    seconds = time.perf_counter() - t0
    ppl = perplexity(model, ids, window=512, batch_size=4, progress=False)
    print(json.dumps({"method": args.method, "keep": args.keep, "by": args.by, "bits": bits, "group_size": gs,
                      "ppl": ppl, "fp_ppl": fp_ppl, "delta_pct": 100 * (ppl / fp_ppl - 1),
                      "quantize_seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
