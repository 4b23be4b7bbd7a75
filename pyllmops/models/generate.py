"""Token generation with a KV cache: a batch of prompts (left-padded), streamed one step at a time.

The sampler is any callable `sampler(logits [B, V] float32, step: int) -> ids [B] int64`:
`pyllmops.nn.Sampler` (the fused, Philox-seeded sampler; step becomes its offset) or, for tensor
parallelism, `pyllmops.parallel.VocabParallelSampler`.
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from pyllmops.models.fused_decode import FusedDecoder

Sampler = Callable[[torch.Tensor, int], torch.Tensor]
FINISHED = -1  # what a row that has already stopped yields


@dataclass
class GenerationStats:
    batch: int = 1
    prompt_tokens: int = 0  # real (unpadded) prompt tokens over the batch
    new_tokens: int = 0  # generated tokens over the batch
    prefill_s: float = 0.0  # prompt forward + first token
    decode_s: float = 0.0  # the steps after the first token
    decode_path: str = ""  # "fused" (one C++ call per step) or "modules: <why not fused>"

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        """Generated tokens per second after the first (whose cost is the prefill)."""
        return (self.new_tokens - self.batch) / self.decode_s if self.decode_s else 0.0


def pad_left(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] int64 and mask [B, T] bool (True = real token), each prompt right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token id lists (empty prompt?)")
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, t - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[row, t - len(p):] = True
    return ids, mask


@torch.inference_mode()
def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, sampler: Sampler, stop_ids: Iterable[int] = (), stats: GenerationStats | None = None, fused: bool = True, kv_cache_dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """Yield the next token of every prompt, one step at a time: [B] int64 (on CPU), FINISHED for
    rows that already produced a stop token (which is yielded once). Ends after max_new_tokens
    steps or when every row has stopped. `stats`, when given, is filled in as it runs.
    kv_cache_dtype: float32, or float16 (half the cache's memory and the bytes a decode step
    reads from it; k and v rounded to float16, see models.llama.KVCache).

    The prompt runs through the model's modules; the decode steps through FusedDecoder (one C++
    call per step, pyllmops/models/fused_decode.py) when `fused` and the model allows it, else
    through the modules (stats.decode_path says which, and why)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids, mask = pad_left(prompts)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    b, t = ids.shape
    stats = stats if stats is not None else GenerationStats()
    stats.batch, stats.prompt_tokens = b, int(mask.sum())

    decoder = FusedDecoder.build(model) if fused else None
    stats.decode_path = "fused" if decoder else f"modules: {FusedDecoder.unsupported(model) if fused else 'fused=False'}"
    cache = model.new_cache(b, t + max_new_tokens, dtype=kv_cache_dtype)
    begin = time.perf_counter()
    logits = model(ids, mask=None if bool(mask.all()) else mask, cache=cache, last_only=True)[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        nxt = sampler(logits, step).to(device)
        nxt = torch.where(done, FINISHED, nxt)
        done |= torch.isin(nxt, stops)
        out = nxt.cpu()
        now = time.perf_counter()
        if step == 0:
            stats.prefill_s, decode_begin = now - begin, now
        else:
            stats.decode_s = now - decode_begin
        stats.new_tokens += int((out != FINISHED).sum())
        yield out
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        # Stopped rows keep computing on a dummy token: their outputs are never used.
        ids = nxt.clamp(min=0)
        logits = decoder.step(ids, cache) if decoder else model(ids[:, None], cache=cache)[:, -1]


def generate_ids(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, sampler: Sampler, stop_ids: Iterable[int] = (), fused: bool = True, kv_cache_dtype: torch.dtype = torch.float32) -> list[list[int]]:
    """The generated ids of each prompt, stop token excluded."""
    stops = set(stop_ids)
    out: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    for step_ids in generate(model, prompts, max_new_tokens=max_new_tokens, sampler=sampler, stop_ids=stops, fused=fused,
                             kv_cache_dtype=kv_cache_dtype):
        for row, tok in enumerate(step_ids.tolist()):
            if not ended[row] and tok != FINISHED:
                ended[row] = tok in stops
                if not ended[row]:
                    out[row].append(tok)
    return out


def stream_text(tokenizer, tokens: Iterable[int], stop_ids: Iterable[int] = ()) -> Iterator[str]:
    """Decode a stream of token ids into text pieces as soon as they form whole UTF-8 characters
    (a character split over several byte-level tokens waits for its last byte)."""
    stops = set(stop_ids)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for tok in tokens:
        if tok in stops:
            break
        piece = decoder.decode(tokenizer.decode_bytes([tok]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
