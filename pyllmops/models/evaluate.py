"""Perplexity with a sliding window, and calibration batches for the quantizers."""
from __future__ import annotations

import importlib
import inspect
import math
from typing import Sequence

import torch
from torch import nn

# Calibration text that exists wherever Python does and is not an evaluation text: the
# docstrings of these standard-library modules (English prose about code). The text depends on
# the Python version only.
CALIBRATION_MODULES = (
    "argparse", "collections", "functools", "itertools", "json", "logging", "pathlib", "re",
    "string", "textwrap", "datetime", "decimal", "fractions", "statistics", "random", "heapq",
    "bisect", "csv", "shutil", "tempfile", "subprocess", "threading", "zipfile", "unittest",
)

# Calibration windows by default: AutoAWQ's 128 samples of 512 tokens (a text yields fewer when it
# is shorter; the default text gives 57). GPTQ fits its calibration activations and needs many of
# them; the measurements behind this default are in docs/quality.md ("Calibration").
CALIB_SAMPLES = 128


def default_calibration_text(max_chars: int | None = None) -> str:
    """Docstrings of CALIBRATION_MODULES (module, then its public classes and functions by name),
    ~114k characters on Python 3.11, cut to max_chars when given."""
    parts: list[str] = []
    for name in CALIBRATION_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module)]
        for attr in sorted(a for a in dir(module) if not a.startswith("_")):
            obj = getattr(module, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == name:
                docs.append(inspect.getdoc(obj))
        parts.extend(d for d in docs if d)
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]


def calibration_batches(tokenizer, text: str | None = None, n_samples: int = CALIB_SAMPLES,
                        seq_len: int = 512) -> list[torch.Tensor]:
    """Up to `n_samples` token windows [1, seq_len] int64, evenly spread over `text` (default:
    default_calibration_text()); fewer when the text is short, one shorter window when it is
    shorter than seq_len. Each is a valid `model(batch)` input, as pyllmops.quantize expects."""
    if n_samples < 1 or seq_len < 2:
        raise ValueError(f"n_samples must be >= 1 and seq_len >= 2, got {n_samples}, {seq_len}")
    ids = tokenizer.encode_ordinary(default_calibration_text() if text is None else text)
    if len(ids) < 2:
        raise ValueError("calibration text must have at least 2 tokens")
    if len(ids) <= seq_len:
        return [torch.tensor([ids])]
    n = min(n_samples, len(ids) // seq_len)
    step = (len(ids) - seq_len) // max(n - 1, 1)
    return [torch.tensor([ids[i * step:i * step + seq_len]]) for i in range(n)]


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) per window: each window scores the tokens no earlier window
    scored and that have context inside it, so with stride < window every token but the first
    is scored once, with >= window - stride tokens of context (except in the first window); with
    stride == window (disjoint windows) each window's first token goes unscored."""
    out, begin, scored_to = [], 0, 1
    while True:
        end = min(begin + window, n)
        if max(scored_to, begin + 1) < end:  # a last one-token window would score nothing
            out.append((begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == n:
            return out
        begin += stride


@torch.inference_mode()
def perplexity(model: nn.Module, ids: Sequence[int] | torch.Tensor, window: int = 512, stride: int | None = None, batch_size: int = 4, progress: bool = False) -> float:
    """exp(mean negative log-likelihood) of `ids` ([N] int64) under `model` (ids [B, T] ->
    logits [B, T, V]), with windows of `window` tokens moving by `stride` (default `window`:
    disjoint windows, the convention of llama.cpp-style "512-token window" numbers and half the
    cost of window // 2, which gives every token more context and so a lower perplexity).
    Windows of equal length run `batch_size` at a time; progress=True shows tqdm on stderr."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    if ids.numel() < 2:
        raise ValueError(f"need at least 2 tokens to score, got {ids.numel()}")
    device = next(model.parameters()).device
    spans = windows(ids.numel(), window, stride)
    groups = [spans[i:i + batch_size] for i in range(0, len(spans), batch_size)]
    # The last window may be shorter: batch only windows of one length.
    groups = [[w for w in g if w[1] - w[0] == length] for g in groups for length in sorted({w[1] - w[0] for w in g})]

    nll, count = 0.0, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(spans), desc="perplexity", unit="window", leave=False)
    for group in groups:
        batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
        logp = torch.log_softmax(model(batch).float(), dim=-1)  # [W, T, V]
        for row, (b, e, first) in enumerate(group):
            targets = batch[row, first - b:]
            pred = logp[row, first - b - 1:e - b - 1]
            nll -= pred.gather(-1, targets[:, None]).double().sum().item()
            count += targets.numel()
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    return math.exp(nll / count)
