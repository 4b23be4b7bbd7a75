"""SmolLM2-135M-Instruct end to end on CPU: pyllmops' Llama against llama.cpp (through
llama-cpp-python) on the same GGUF, on the same cores, measured in the same run:

- decode tokens/s at batch 1, on 1 and on 2 threads: greedy, DECODE_TOKENS new tokens from the
  chat prompt, timed after the first token (whose cost is the prefill) as `pyllmops generate`
  reports it; pyllmops through `generate()` (its fused C++ decode step), llama.cpp through
  `Llama.eval` one token at a time with the argmax taken in Python, as llama-cpp-python users do;
- decode tokens/s at batch 1 after a LONG_CONTEXT-token prompt (int4 against llama.cpp), where
  reading the KV cache each step costs as much as the weights;
- decode tokens/s at batch 1 of a GPTQ act-order int4 model against the RTN one (the fused step's
  column gathers; GPTQ on 8 calibration windows, built only for these rows).
- batched decode: B = 1..16 prompts of different lengths decoding together (pyllmops int4, exact
  and with compute_dtype=torch.bfloat16: x rounded to bfloat16 against the exact weight on
  vdpbf16ps), total tokens/s and the ratio to batch 1 (llama-cpp-python has no batched decode to
  compare with);
- 512-token prefill tokens/s, also with the int4 and w8a16 models' prefill GEMMs in bfloat16
  (`compute_dtype=torch.bfloat16`, `pyllmops generate --compute-dtype bfloat16`: x and the
  dequantized weight rounded to bfloat16 as GPU W4A16 kernels do; llama.cpp rounds x to Q8 blocks);
- perplexity on the same text with the same 512-token windows.

pyllmops runs three weight formats: "int4" is what `pyllmops generate --quant w4a16-rtn` builds
(decoder linears int4 RTN group 128, the LM head int8 per channel like the GGUF's Q8_0 output
layer), "w8a16" every linear int8 per channel, "fp32" the GGUF's Q4_1 weights dequantized to
float32 (~5x the bytes per token of llama.cpp's Q4_1). llama.cpp runs the GGUF's Q4_1 weights.

The llama.cpp build matters: the baseline should be llama.cpp at its best on this CPU. Build
llama-cpp-python from source with the CPU's vector extensions on and GGML_NATIVE off, e.g. on an
AVX2 CPU `CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
-DGGML_BMI2=ON" pip install llama-cpp-python`, plus -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON
-DGGML_AVX512_BF16=ON on an AVX-512 one (GGML_NATIVE=ON crashed on an AMX CPU). The rows name the
instruction sets llama.cpp reports (llama_print_system_info).
"""
import copy
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.conftest import record

THREADS = [int(t) for t in os.environ.get("PYLLMOPS_BENCH_THREADS", "1,2").split(",")]
DECODE_TOKENS = 100
BATCHES = [1, 2, 4, 8, 16]
BATCH_TOKENS = 32
PREFILL = 512
LONG_CONTEXT = 1536
EVAL_TEXT = Path("/usr/share/common-licenses/GPL-3")
QUESTION = "Write a short story about a robot who learns to paint."
MODEL = "SmolLM2-135M-Instruct Q4_1 gguf"
FORMATS = ["int4", "w8a16", "fp32"]


@pytest.fixture(scope="module")
def smollm2():
    from pyllmops.models import ModelNotInstalledError, load_smollm2

    try:
        return load_smollm2()
    except ModelNotInstalledError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def models(smollm2):
    """format -> (model, tokenizer), quantized as described in the module docstring."""
    import pyllmops

    model, tok = smollm2
    quantized = {
        "int4": pyllmops.quantize(copy.deepcopy(model), "w4a16-rtn", group_size=128, int8=("lm_head",), progress=False),
        "w8a16": pyllmops.quantize(copy.deepcopy(model), "w8a16", skip=(), progress=False),
        "fp32": model,
    }
    return {k: (m, tok) for k, m in quantized.items()}


_LLAMAS: dict = {}


def _llama_cpp(threads: int, logits_all: bool = False, n_ctx: int = 1024):
    """One llama_cpp.Llama per (threads, logits_all, n_ctx), loaded once per run."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="baseline needs llama-cpp-python (see the module docstring)")
    from pyllmops.models import smollm2_path

    key = (threads, logits_all, n_ctx)
    if key not in _LLAMAS:
        _LLAMAS[key] = llama_cpp.Llama(str(smollm2_path()), n_ctx=n_ctx, n_batch=PREFILL, n_threads=threads,
                                       n_threads_batch=threads, logits_all=logits_all, verbose=False)
    return _LLAMAS[key]


def _llama_cpp_greedy(llm) -> int:
    """The argmax of the last evaluated token's logits. (Llama.scores is only written with
    logits_all=True: reading it otherwise gave the argmax of a stale row, token 0 every step.)"""
    import llama_cpp

    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))))


def _llama_cpp_build() -> str:
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()  # "CPU : SSE3 = 1 | AVX2 = 1 | ..."
    isa = re.findall(r"(\w+) = 1", info)
    return f"llama.cpp Q4_1 ({llama_cpp.__version__}: {' '.join(isa) or info.strip()})"


def _backend(fmt: str) -> str:
    base, _, prefill = fmt.partition(" ")
    name = {"int4": "pyllmops int4 g128, int8 head", "w8a16": "pyllmops w8a16", "fp32": "pyllmops fp32"}[base]
    return name + (", compute_dtype bf16" if prefill else "")


def _model_of(models, fmt: str):
    """The model of `fmt`; "int4 bf16" / "w8a16 bf16": its bench.alternate.bf16_copy."""
    from bench.alternate import bf16_copy

    base, _, prefill = fmt.partition(" ")
    return bf16_copy(models[base][0]) if prefill else models[base][0]


def _prompt(tok) -> list[int]:
    from pyllmops.models.chat import chat_prompt

    return chat_prompt(tok, QUESTION)


def _text_ids(tok, n: int | None = None) -> list[int]:
    if not EVAL_TEXT.is_file():
        pytest.skip(f"needs {EVAL_TEXT}")
    ids = tok.encode_ordinary(EVAL_TEXT.read_text())
    return ids if n is None else ids[:n]


def _greedy(logits: torch.Tensor, step: int) -> torch.Tensor:
    return logits.argmax(-1)


def _ours_decode(model, prompts: list[list[int]], new_tokens: int, kv_cache_dtype: torch.dtype = torch.float32):
    """setup, run for benchmark.pedantic: setup runs the prefill and the first token of generate(),
    run the other new_tokens - 1 steps (no stop tokens: every step decodes)."""
    from pyllmops.models.generate import generate

    state = {}

    def setup():
        steps = generate(model, prompts, max_new_tokens=new_tokens, sampler=_greedy, kv_cache_dtype=kv_cache_dtype)
        next(steps)
        state["steps"] = steps
        return (), {}

    def run():
        for _ in state["steps"]:
            pass

    return setup, run


def _llama_cpp_decode(llm, prompt: list[int], new_tokens: int):
    """setup, run for benchmark.pedantic, as _ours_decode: setup evaluates the prompt (its logits
    give the first token), run the other new_tokens - 1 greedy steps, one Llama.eval each."""

    def setup():
        llm.reset()
        llm.eval(prompt)
        return (), {}

    def run():
        for _ in range(new_tokens - 1):
            llm.eval([_llama_cpp_greedy(llm)])

    return setup, run


# -- decode, batch 1 ---------------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("impl", ["llama.cpp", *FORMATS])
def test_decode(benchmark, impl, threads, smollm2, request):
    tok = smollm2[1]
    prompt = _prompt(tok)
    torch.set_num_threads(threads)
    if impl == "llama.cpp":
        backend = _llama_cpp_build()
        setup, run = _llama_cpp_decode(_llama_cpp(threads), prompt, DECODE_TOKENS)
    else:
        backend = _backend(impl)
        setup, run = _ours_decode(request.getfixturevalue("models")[impl][0], [prompt], DECODE_TOKENS)
    record(benchmark, op=f"decode (greedy, {DECODE_TOKENS} new tokens, batch 1)", shape=f"{MODEL} {threads} threads",
           backend=backend, baseline=impl == "llama.cpp", unit="tok/s")
    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["throughput"] = (DECODE_TOKENS - 1) / benchmark.stats.stats.median


@pytest.fixture(scope="module")
def gptq_act_order(smollm2):
    """w4a16-gptq with its default act-order on 8 calibration windows (its decode speed only), the
    LM head int8 as in the int4 format."""
    import pyllmops
    from pyllmops.models.evaluate import calibration_batches

    model, tok = smollm2
    calib = calibration_batches(tok, None, n_samples=8)
    return pyllmops.quantize(copy.deepcopy(model), "w4a16-gptq", calib=calib, group_size=128, int8=("lm_head",),
                             progress=False)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("impl", ["int4", "int4 gptq act-order"])
def test_decode_act_order(benchmark, impl, threads, smollm2, request):
    """Batch-1 decode of a GPTQ act-order model (the fused step gathers x's columns per projection
    order) against the RTN int4 model (baseline) in the same run."""
    prompt = _prompt(smollm2[1])
    torch.set_num_threads(threads)
    model = request.getfixturevalue("models")["int4"][0] if impl == "int4" else request.getfixturevalue("gptq_act_order")
    setup, run = _ours_decode(model, [prompt], DECODE_TOKENS)
    record(benchmark, op=f"decode act-order (greedy, {DECODE_TOKENS} new tokens, batch 1)",
           shape=f"{MODEL} {threads} threads", backend=_backend("int4") if impl == "int4" else
           "pyllmops int4 g128 GPTQ act-order, int8 head", baseline=impl == "int4", unit="tok/s")
    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["throughput"] = (DECODE_TOKENS - 1) / benchmark.stats.stats.median


# -- decode at a long context ------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("impl", ["llama.cpp", "int4", "int4 f16 cache"])
def test_decode_long_context(benchmark, impl, threads, smollm2, request):
    """Batch-1 greedy decode of BATCH_TOKENS tokens after a LONG_CONTEXT-token prompt, where every
    step's attention reads the whole KV cache (pyllmops: float32 by default, 92 MB for SmolLM2 at
    2000 tokens, or float16; llama.cpp: f16 by default), as a long chat or document does."""
    tok = smollm2[1]
    prompt = _text_ids(tok, LONG_CONTEXT)
    torch.set_num_threads(threads)
    if impl == "llama.cpp":
        backend = _llama_cpp_build()
        setup, run = _llama_cpp_decode(_llama_cpp(threads, n_ctx=2048), prompt, BATCH_TOKENS)
    else:
        half = impl.endswith("f16 cache")
        backend = _backend("int4") + (", f16 KV cache" if half else "")
        setup, run = _ours_decode(request.getfixturevalue("models")["int4"][0], [prompt], BATCH_TOKENS,
                                  torch.float16 if half else torch.float32)
    record(benchmark, op=f"decode after a {LONG_CONTEXT}-token prompt (greedy, {BATCH_TOKENS} new tokens, batch 1)",
           shape=f"{MODEL} {threads} threads", backend=backend, baseline=impl == "llama.cpp", unit="tok/s")
    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["throughput"] = (BATCH_TOKENS - 1) / benchmark.stats.stats.median


# -- batched decode ----------------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["int4", "int4 bf16"])
def test_batched_decode(benchmark, impl, batch, threads, models):
    """B prompts of lengths 20, 27, 34, ... tokens (left-padded together), BATCH_TOKENS steps each."""
    model, tok = _model_of(models, impl), models["int4"][1]
    text = _text_ids(tok)
    prompts = [text[50 * i: 50 * i + 20 + 7 * i] for i in range(batch)]
    torch.set_num_threads(threads)
    setup, run = _ours_decode(model, prompts, BATCH_TOKENS)
    record(benchmark, op=f"batched decode (greedy, {BATCH_TOKENS} new tokens per row)",
           shape=f"{MODEL} B={batch:>2} {threads} threads", backend=_backend(impl), unit="tok/s")
    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["throughput"] = batch * (BATCH_TOKENS - 1) / benchmark.stats.stats.median


# -- prefill -----------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("impl", ["llama.cpp", *FORMATS, "int4 bf16", "w8a16 bf16"])
def test_prefill(benchmark, impl, threads, smollm2, request):
    ids = _text_ids(smollm2[1], PREFILL)
    torch.set_num_threads(threads)
    if impl == "llama.cpp":
        llm = _llama_cpp(threads)
        backend = _llama_cpp_build()

        def run():
            llm.reset()
            llm.eval(ids)
    else:
        model = _model_of(request.getfixturevalue("models"), impl)
        backend = _backend(impl)

        @torch.inference_mode()
        def run():
            model(torch.tensor([ids]), cache=model.new_cache(1, PREFILL), last_only=True)

    record(benchmark, op=f"prefill ({PREFILL} tokens)", shape=f"{MODEL} {threads} threads", backend=backend,
           baseline=impl == "llama.cpp", unit="tok/s")
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["throughput"] = PREFILL / benchmark.stats.stats.median


# -- perplexity --------------------------------------------------------------------------------

def _llama_cpp_perplexity(llm, ids: list[int], window: int) -> float:
    """Same windows and scoring as pyllmops.models.evaluate.perplexity, from llama.cpp's logits."""
    from pyllmops.models.evaluate import windows

    nll, count = 0.0, 0
    for begin, end, first in windows(len(ids), window, window):
        llm.reset()
        llm.eval(ids[begin:end])
        logits = torch.from_numpy(np.array(llm.scores[: end - begin], dtype=np.float32))
        logp = torch.log_softmax(logits, -1)[first - begin - 1:end - begin - 1]
        targets = torch.tensor(ids[first:end])
        nll -= logp.gather(-1, targets[:, None]).double().sum().item()
        count += len(targets)
    return math.exp(nll / count)


@pytest.mark.parametrize("impl", ["llama.cpp", "fp32"])
def test_perplexity(benchmark, impl, smollm2):
    from pyllmops.models.evaluate import perplexity

    model, tok = smollm2
    ids = _text_ids(tok)
    threads = max(THREADS)
    torch.set_num_threads(threads)
    if impl == "llama.cpp":
        llm = _llama_cpp(threads, logits_all=True)
        backend = _llama_cpp_build()
        run = lambda: _llama_cpp_perplexity(llm, ids, PREFILL)  # noqa: E731
    else:
        backend = _backend(impl)
        run = lambda: perplexity(model, ids, window=PREFILL, batch_size=1)  # noqa: E731
    record(benchmark, op="perplexity GPL-3 (window 512, disjoint)", shape=f"{MODEL} {len(ids)} tokens {threads} threads",
           backend=backend, baseline=impl == "llama.cpp")
    ppl = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["ppl"] = ppl
    benchmark.extra_info["throughput"] = len(ids) / benchmark.stats.stats.median
    benchmark.extra_info["unit"] = "tok/s"
