"""SmolLM2-135M loaded through transformers vs the bundled Llama: perplexity change of every
quantization method on both (not a pytest file: run it directly).

    python bench/quality_transformers.py [--text /usr/share/common-licenses/GPL-3] [--methods a,b,...]
        [--calib-samples 57] [--json out.json]

transformers reads the same GGUF (`from_pretrained(dir, gguf_file=...)`, dequantized to float32);
both models get the same token ids (pyllmops' tokenizer), the same calibration batches (the
default calibration text, --calib-samples windows of 512 tokens) and disjoint 512-token windows of
--text. Prints per method the two perplexities, their changes against each model's float
perplexity and the difference of the changes in points. Needs transformers, gguf and accelerate.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from torch import nn

import pyllmops
from pyllmops.models import load_smollm2, smollm2_path
from pyllmops.models.evaluate import calibration_batches, perplexity

METHODS = "w8a8,w8a8-sq,w8a8-static,w8a8-static-sq,w4a16-rtn,w4a16-gptq,w4a16-awq,w8a16"


class Logits(nn.Module):
    """model(ids) -> logits for a transformers model (what perplexity() calls)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids).logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--calib-samples", type=int, default=57)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import transformers

    llama, tok = load_smollm2()
    path = smollm2_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    ids = tok.encode(open(args.text, encoding="utf-8").read())
    calib = calibration_batches(tok, n_samples=args.calib_samples)
    models = {"llama": (llama, lambda m: m), "transformers": (hf, Logits)}
    base = {name: perplexity(wrap(m), ids) for name, (m, wrap) in models.items()}
    print(f"float: llama {base['llama']:.3f}  transformers {base['transformers']:.3f}  ({len(ids)} tokens, "
          f"{len(calib)} calibration windows)", flush=True)
    rows = []
    for method in args.methods.split(","):
        row = {"method": method}
        for name, (m, wrap) in models.items():
            t0 = time.time()
            q = copy.deepcopy(m)
            pyllmops.quantize(q, method, calib=calib, progress=False)
            ppl = perplexity(wrap(q), ids)
            row[name] = {"ppl": ppl, "change_pct": 100 * (ppl / base[name] - 1), "seconds": time.time() - t0}
        row["points_apart"] = row["transformers"]["change_pct"] - row["llama"]["change_pct"]
        rows.append(row)
        print(f"{method:16s} llama {row['llama']['ppl']:8.3f} ({row['llama']['change_pct']:+6.2f}%)  transformers "
              f"{row['transformers']['ppl']:8.3f} ({row['transformers']['change_pct']:+6.2f}%)  "
              f"{row['points_apart']:+.2f} points", flush=True)
        if args.json:  # after every method, so that a long run that is cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"command": " ".join(["python"] + sys.argv), "text": args.text, "tokens": len(ids),
                           "calib_windows": len(calib), "float": base, "rows": rows, "torch": torch.__version__,
                           "transformers": transformers.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
