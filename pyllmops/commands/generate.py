"""`pyllmops generate PROMPT [PROMPT ...]`: chat with SmolLM2-135M-Instruct, streaming the answer
to stdout (stats go to stderr, so stdout holds only the generated text). Several prompts (or
--prompts-file) decode together as one batch, as llama.cpp's batched example and vLLM's
LLM.generate(prompts) do: the answers are written when the batch ends, each after a header line,
or as JSON lines with --json; the stats line gives the batch's total tokens per second."""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from pyllmops.commands import _model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with the embedded SmolLM2-135M-Instruct model")
    p.add_argument("prompt", nargs="*", help="the user message (or, with --raw, the text to continue); several "
                   "decode together as one batch")
    p.add_argument("--prompts-file", type=Path, help="more prompts, one per line (blank lines skipped), in the same "
                   "batch; - reads them from standard input")
    p.add_argument("--json", action="store_true", help="write one JSON object per prompt ({\"prompt\", \"text\", "
                   "\"new_tokens\"}) instead of the text")
    p.add_argument("--raw", action="store_true", help="continue the prompt as plain text, without the chat template")
    p.add_argument("--system", help="system prompt (default: the model's own)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=50, help="0 = off (default 50)")
    p.add_argument("--top-p", type=float, default=0.9, help="1 = off (default 0.9)")
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--kv-cache-dtype", choices=["float32", "float16"], default="float32",
                   help="float16 halves the KV cache's memory and the bytes each decode step reads from it, "
                        "k and v rounded to float16 as llama.cpp's default f16 cache (default float32)")
    p.epilog = ("With a weight-only --quant (w4a16-*, w8a16) the LM head is int8 per channel, as in llama.cpp's "
                "Q4 GGUFs; --quant-option int8=[] (w4a16-*) or skip='[\"lm_head\"]' (w8a16) keeps it float.")
    _model.add_model_args(p, quant_list=False, compute_default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        if str(args.prompts_file) == "-":
            text = sys.stdin.read()
        elif not args.prompts_file.is_file():
            raise FileNotFoundError(f"--prompts-file not found: {args.prompts_file}")
        else:
            text = args.prompts_file.read_text()
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("give a prompt (or --prompts-file with at least one non-blank line)")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i + 1} of {len(prompts)} must not be empty" if len(prompts) > 1
                             else "prompt must not be empty")
    args.prompts = prompts
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    _model.check_methods([args.quant])
    if args.seed is None:  # every rank must draw with the same seed
        args.seed = int.from_bytes(os.urandom(7), "little")
    _model.setup(args)
    return _model.run_ranks(args, _run_rank)


def _run_rank(tp, args: argparse.Namespace) -> int:
    """One tensor-parallel rank (all of it for --tp 1); rank 0 writes the text and stats."""
    import torch
    import torch.distributed

    from pyllmops.models.parallel import parallelize_llama

    if tp.world > 1:  # under torchrun each rank drew its own random seed: all use rank 0's
        seed = torch.tensor([args.seed])
        torch.distributed.broadcast(seed, torch.distributed.get_global_rank(tp.group, 0) if tp.group else 0, group=tp.group)
        args.seed = int(seed)
    model, tok = _model.load(args)
    args.quant_option = _int8_head(args.quant, args.quant_option)
    model = _model.quantize(model, tok, args.quant, args)
    if tp.world > 1:
        model = parallelize_llama(model, tp)
    # The model, tokenizer and their tables are built: move them out of the collector's reach, or
    # its full passes walk them again every few thousand decode steps (~2% of a decode step's time).
    # (unfrozen at the end: triton's nanobind types report frozen objects as leaks at exit)
    gc.collect()
    gc.freeze()
    try:
        return _stream(tp, args, model, tok)
    finally:
        gc.unfreeze()


def _stream(tp, args: argparse.Namespace, model, tok) -> int:
    """Generate from args.prompts (one batch) and write the text (rank 0) and the stats line."""
    import torch

    from pyllmops.models.chat import DEFAULT_SYSTEM_PROMPT, chat_prompt, stop_ids
    from pyllmops.models.generate import GenerationStats, generate, stream_text
    from pyllmops.parallel import VocabParallelSampler

    # The fused sampler's (seed, offset = step) draw: the same tokens for every --tp.
    sampler = VocabParallelSampler(args.temperature, args.top_k, args.top_p, seed=args.seed, group=tp.group,
                                   world=tp.world)
    system = args.system or DEFAULT_SYSTEM_PROMPT
    prompts = [tok.encode_ordinary(p) if args.raw else chat_prompt(tok, p, system) for p in args.prompts]
    stops = stop_ids(tok)
    stats = GenerationStats()
    steps = generate(model, prompts, max_new_tokens=args.max_new_tokens, sampler=sampler, stop_ids=stops, stats=stats,
                     kv_cache_dtype=getattr(torch, args.kv_cache_dtype))
    if tp.rank != 0:
        for _ in steps:
            pass
        return 0
    if len(prompts) == 1 and not args.json:  # stream the one answer as it comes
        if args.raw:
            sys.stdout.write(args.prompts[0])
        for piece in stream_text(tok, (int(s[0]) for s in steps), stops):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        _write_batch(args, tok, [list(row) for row in zip(*(s.tolist() for s in steps))], stops)
    from pyllmops.nn import WeightOnlyLinear

    bf16 = any(isinstance(m, WeightOnlyLinear) and m.compute_dtype == torch.bfloat16 for m in model.modules())
    batch = f", batch {stats.batch}" if stats.batch > 1 else ""
    print(
        f"[{args.quant}, {args.dtype}{', x in bfloat16' if bf16 else ''}, {args.device}, tp={tp.world}{batch}] prefill: "
        f"{stats.prompt_tokens} tokens in {stats.prefill_s:.3f} s ({stats.prefill_tok_s:.1f} tok/s); decode: "
        f"{stats.new_tokens} tokens, {stats.decode_tok_s:.1f} tok/s ({stats.decode_path})",
        file=sys.stderr,
    )
    return 0


def _write_batch(args: argparse.Namespace, tok, rows: list[list[int]], stops) -> None:
    """Each prompt's answer (its tokens up to the first stop): after a header line naming the
    prompt, or as one JSON object per line with --json."""
    from pyllmops.models.generate import FINISHED, stream_text

    for i, (prompt, row) in enumerate(zip(args.prompts, rows)):
        ids = [t for t in row if t != FINISHED]
        text = "".join(stream_text(tok, ids, stops))
        new = sum(1 for t in ids if t not in stops)
        if args.json:
            print(json.dumps({"prompt": prompt, "text": (prompt if args.raw else "") + text, "new_tokens": new}))
        else:
            print(f"=== {i + 1}/{len(args.prompts)}: {prompt}")
            print((prompt if args.raw else "") + text)


def _int8_head(method: str, options: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """--quant options with the LM head made int8 per channel for the weight-only methods, unless
    the user set int8= (w4a16-*) or skip= (w8a16) itself: llama.cpp's Q4 GGUFs keep the output
    layer in Q8_0 too, and in float32 the head is over half the bytes a SmolLM2 int4 decode step
    reads. Greedy answers are unchanged on the chat prompts tested (tests/models/test_cli.py)."""
    given = {k for k, _ in options}
    if method.startswith("w4a16-") and "int8" not in given:
        return [*options, ("int8", ["lm_head"])]
    if method == "w8a16" and "skip" not in given:
        return [*options, ("skip", [])]
    return options
