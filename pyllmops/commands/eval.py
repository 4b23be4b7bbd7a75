"""`pyllmops eval --text-file F [--quant a,b,c]`: perplexity of SmolLM2 on a text, float and each
quantization method, as a table (or one JSON object with --json)."""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from pyllmops.commands import _model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="perplexity of the embedded model on a text, float vs quantization methods")
    p.add_argument("--text-file", type=Path, required=True, help="the evaluation text (UTF-8)")
    p.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, help="tokens the window moves by (default: the window, i.e. disjoint windows)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    _model.add_model_args(p, quant_list=True, compute_default="float32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = ["fp"] + [m for m in dict.fromkeys(s.strip() for s in args.quant.split(",")) if m and m != "fp"]
    _model.check_methods(methods)
    if not args.text_file.is_file():
        raise FileNotFoundError(f"--text-file not found: {args.text_file}")
    if args.calib_file is not None and not args.calib_file.is_file():
        raise FileNotFoundError(f"--calib-file not found: {args.calib_file}")
    _model.setup(args)
    args.methods = methods
    return _model.run_ranks(args, _run_rank)


def _run_rank(tp, args: argparse.Namespace) -> int:
    """One tensor-parallel rank (all of it for --tp 1); rank 0 prints the results."""
    from pyllmops.models.evaluate import perplexity
    from pyllmops.models.parallel import parallelize_llama

    methods = args.methods
    float_model, tok = _model.load(args)
    ids = tok.encode_ordinary(args.text_file.read_text())
    if len(ids) < 2:
        raise ValueError(f"--text-file has {len(ids)} tokens; need at least 2")

    results: dict[str, dict[str, float]] = {}
    for method in methods:
        if tp.rank == 0:
            print(f"{method}: {'' if method == 'fp' else 'quantizing, then '}scoring {len(ids)} tokens", file=sys.stderr)
        # Quantization is in place: each method starts from its own copy of the float model.
        model = float_model if method == "fp" else _model.quantize(copy.deepcopy(float_model), tok, method, args)
        if tp.world > 1:  # full logits gathered on every rank: perplexity runs unchanged
            model = parallelize_llama(model if method != "fp" else copy.deepcopy(model), tp, gather_logits=True)
        ppl = perplexity(model, ids, window=args.window, stride=args.stride, batch_size=args.batch_size,
                         progress=tp.rank == 0)
        results[method] = {"ppl": ppl}
        if method != "fp":
            results[method]["delta_pct"] = 100.0 * (ppl / results["fp"]["ppl"] - 1.0)
        del model

    if tp.rank != 0:
        return 0
    if args.json:
        print(json.dumps({"text_tokens": len(ids), "results": results}))
    else:
        print(f"{args.text_file}: {len(ids)} tokens, window {args.window}, {args.dtype}, tp={tp.world}")
        print(f"{'method':<16} {'perplexity':>11} {'vs fp':>9}")
        for method, r in results.items():
            delta = f"{r['delta_pct']:+.2f}%" if "delta_pct" in r else ""
            print(f"{method:<16} {r['ppl']:>11.3f} {delta:>9}")
    return 0
