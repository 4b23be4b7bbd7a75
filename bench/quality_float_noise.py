"""How far float rounding alone moves a method's perplexity change on the bundled SmolLM2 (not a
pytest file: run it directly).

    python bench/quality_float_noise.py [--methods w8a8-static,w8a8] [--perturbations 3]
        [--calib-samples 16] [--json out.json]

Run 0 is the model as loaded; run s >= 1 multiplies every float weight by (1 + 2^-23 r), r ~ N(0, 1)
from a generator seeded with s: about one float32 ulp, the size of the differences two float
implementations of the same forward (the bundled Llama and transformers' LlamaForCausalLM) make.
Each run quantizes a copy with every method (same calibration windows and GPL-3 windows as
bench/quality_transformers.py) and prints its perplexity change. The spread over the runs is the
noise floor for comparing one method across two implementations: a method whose int8 rounding
sits on a cliff (per-tensor static scales on SmolLM2's outlier channels) amplifies ulp-level
differences into points of perplexity.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

import pyllmops
from pyllmops.models import load_smollm2
from pyllmops.models.evaluate import calibration_batches, perplexity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    p.add_argument("--methods", default="w8a8-static,w8a8")
    p.add_argument("--perturbations", type=int, default=3)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    llama, tok = load_smollm2()
    ids = tok.encode(open(args.text, encoding="utf-8").read())
    calib = calibration_batches(tok, n_samples=args.calib_samples)
    rows = []
    for s in range(args.perturbations + 1):
        model = copy.deepcopy(llama)
        if s:
            g = torch.Generator().manual_seed(s)
            with torch.no_grad():
                for prm in model.parameters():
                    prm.mul_(1 + 2.0 ** -23 * torch.randn(prm.shape, generator=g))
        base = perplexity(model, ids)
        for method in args.methods.split(","):
            q = copy.deepcopy(model)
            pyllmops.quantize(q, method, calib=calib, progress=False)
            ppl = perplexity(q, ids)
            rows.append({"perturbation_seed": s, "method": method, "float_ppl": base, "ppl": ppl,
                         "change_pct": 100 * (ppl / base - 1)})
            print(f"perturbation {s}  {method:16s} float {base:.6f}  quantized {ppl:.3f}  "
                  f"change {rows[-1]['change_pct']:+.2f}%", flush=True)
    spread = {m: max(r["change_pct"] for r in rows if r["method"] == m) - min(r["change_pct"] for r in rows if r["method"] == m)
              for m in args.methods.split(",")}
    print("spread (points):", {m: round(v, 2) for m, v in spread.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["python"] + sys.argv), "text": args.text, "tokens": len(ids),
                       "calib_windows": len(calib), "rows": rows, "spread_points": spread,
                       "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
