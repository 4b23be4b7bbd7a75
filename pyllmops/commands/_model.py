"""What `generate` and `eval` share: model options, loading SmolLM2 on a device and dtype, and
quantizing it with a registered method."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _alpha(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _option(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a Python name, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def add_model_args(p: argparse.ArgumentParser, *, quant_list: bool, compute_default: str) -> None:
    g = p.add_argument_group("model")
    if quant_list:
        g.add_argument("--quant", default="", help="comma-separated quantization methods to compare with fp (see --quant help in `generate`)")
    else:
        g.add_argument("--quant", default="fp", help="fp (no quantization) or a method of pyllmops.quant.methods.available_methods()")
    g.add_argument("--group-size", type=int, help="quantization group size (methods that group weights)")
    g.add_argument("--bits", type=int, help="quantization bits (methods that take it)")
    g.add_argument("--alpha", type=_alpha, help="SmoothQuant migration strength for the *-sq methods: a number in "
                   "[0, 1] or 'auto' (the default here: per smoothing group, the alpha of 0.3..0.9 with the least "
                   "W8A8 output error on the calibration text; on SmolLM2-135M it meets the issue's goals, fixed 0.5 "
                   "does not; the Python API defaults to 'auto' too)")
    g.add_argument("--quant-option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                   help="extra keyword option for the quantization method(s), repeatable; VALUE is read as JSON "
                        "when it parses (4, 0.5, true, [\"q_proj\"]), else as a string, e.g. inspect=false")
    g.add_argument("--calib-file", type=Path, help="calibration text for calibrated methods (default: Python standard-library docstrings, not an eval text)")
    g.add_argument("--calib-samples", type=_positive, default=None, metavar="N",
                   help="calibration windows of 512 tokens, evenly spread over the calibration text (default "
                        "128, as AutoAWQ; a shorter text gives fewer: the default text 57)")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    g.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights and activations of the float model")
    g.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=compute_default,
                   help="weight-only methods (w4a16-*, w8a16): bfloat16 rounds the activations to bfloat16 before "
                        "the weight, as GPU W4A16 kernels (Marlin, vLLM) do and as llama.cpp rounds them to 8 bits: "
                        "the prefill GEMMs in bfloat16 (~2x float32's speed), batched decode on bf16 dot products "
                        "(~1.6x at 8 sequences), the weight exact; float32 keeps every product exact; auto is "
                        "bfloat16 on a CPU that multiplies bfloat16 in hardware (AVX512_BF16 or AMX), else float32 "
                        f"(default: {compute_default}" + ("" if compute_default == "auto" else
                        ", so that a method's perplexity measures its weights alone") + ")")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel degree: N > 1 runs N local processes joined by gloo (CPU), or, under "
                        "torchrun with N processes, one rank per process (NCCL on CUDA)")


def check_methods(names: list[str]) -> list[str]:
    """`names` with 'fp' accepted; raises ValueError listing the valid choices for any other."""
    from pyllmops.quant.methods import available_methods

    known = available_methods()
    bad = [n for n in names if n != "fp" and n not in known]
    if bad:
        raise ValueError(f"unknown --quant {', '.join(map(repr, bad))}: choose from fp, {', '.join(known) or '(no methods installed)'}")
    return names


def setup(args: argparse.Namespace) -> torch.device:
    if args.tp < 1:
        raise ValueError(f"--tp must be >= 1, got {args.tp}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    return torch.device(args.device)


TP_TIMEOUT_S = 300.0  # collectives wait this long for a peer (a slow rank may still be loading)


def run_ranks(args: argparse.Namespace, rank_fn) -> int:
    """rank_fn(tp: TPGroup, args) -> exit code, on args.tp tensor-parallel ranks: in this process
    for --tp 1; as this process's rank when started by torchrun (WORLD_SIZE must equal --tp);
    else on --tp local processes joined by gloo over 127.0.0.1. Returns rank 0's result."""
    import os

    from pyllmops.parallel import TPGroup, init_tensor_parallel
    from pyllmops.parallel.launch import spawn

    if args.tp == 1:
        return rank_fn(TPGroup.single(args.device), args)
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != args.tp:
            raise ValueError(f"--tp {args.tp} but torchrun started WORLD_SIZE={os.environ['WORLD_SIZE']} processes")
        import torch.distributed as dist

        tp = init_tensor_parallel(timeout=TP_TIMEOUT_S)
        try:
            return rank_fn(tp, args)
        finally:  # gloo's threads still running at interpreter exit would abort the process
            dist.destroy_process_group()
    if args.device == "cuda":
        raise ValueError(f"--tp {args.tp} on CUDA: launch with `torchrun --nproc-per-node {args.tp} -m pyllmops.cli ...`")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.tp)
    outcomes = spawn(rank_fn, args.tp, (args,), backend="gloo", timeout=TP_TIMEOUT_S, deadline=float("inf"),
                     threads=threads)
    return outcomes[0].value


def load(args: argparse.Namespace):
    """(model, tokenizer) of SmolLM2 on args.device in args.dtype, not yet quantized."""
    from pyllmops.models import load_smollm2

    return load_smollm2(dtype=DTYPES[args.dtype], device=args.device)


def quantize(model, tokenizer, method: str, args: argparse.Namespace):
    """Quantize `model` in place with `method` ('fp': unchanged), options from args."""
    if method == "fp":
        if args.compute_dtype == "bfloat16":
            raise ValueError("--compute-dtype bfloat16 applies to weight-only methods (w4a16-*, w8a16), not --quant "
                             "fp (use --dtype bfloat16 for a bfloat16 float model)")
        return model
    import pyllmops
    from pyllmops.models.evaluate import calibration_batches

    options = {k: getattr(args, k) for k in ("group_size", "bits", "alpha") if getattr(args, k) is not None}
    options.update(getattr(args, "quant_option", ()))
    if method.endswith("-sq"):
        options.setdefault("alpha", "auto")  # the CLI's default for SmoothQuant (see --alpha)
    text = args.calib_file.read_text() if args.calib_file else None
    samples = {} if args.calib_samples is None else {"n_samples": args.calib_samples}
    calib = [b.to(args.device) for b in calibration_batches(tokenizer, text, **samples)]
    try:
        model = pyllmops.quantize(model, method, calib=calib, **options)
    except TypeError as err:  # an option (e.g. from --quant-option) the method does not take
        if "unexpected keyword argument" in str(err):
            raise ValueError(f"{method}: {err}") from None
        raise
    from pyllmops.nn import set_compute_dtype

    dtype = resolve_compute_dtype(args)
    if dtype is not None:
        try:
            set_compute_dtype(model, dtype)
        except ValueError as err:  # no weight-only layer: an error when asked for, fine for auto (W8A8)
            if args.compute_dtype == "bfloat16":
                raise ValueError(f"--compute-dtype bfloat16: {err} ({method} made none)") from None
    return model


def resolve_compute_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The activations' rounding that --compute-dtype asks of weight-only layers: None (exact) or
    torch.bfloat16. auto: bfloat16 on a CPU whose bfloat16 products run in hardware (AVX512_BF16
    or AMX: 2x float32's GEMM rate, batched decode on vdpbf16ps), where llama.cpp and GPU W4A16
    runtimes also round x; exact elsewhere (emulated bf16 would be slower) and on CUDA."""
    if args.compute_dtype == "bfloat16":
        return torch.bfloat16
    if args.compute_dtype == "auto" and args.device == "cpu" and args.dtype == "float32":
        from pyllmops.ops.weight_only import cpu_bf16_native

        return torch.bfloat16 if cpu_bf16_native() else None
    return None
