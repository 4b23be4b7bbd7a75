"""Write tests/data/llmcompressor/<scheme>/: checkpoints that llmcompressor itself quantizes and
saves (compressed-tensors), with the logits its quantized model gives, for
tests/formats/test_llmcompressor_checkpoint.py.

llmcompressor pins its own transformers, so it cannot share the test venv: run this with a venv
that has llmcompressor (versions used for the committed files are in tests/data/llmcompressor/README.md):

    python -m venv /tmp/lc && /tmp/lc/bin/pip install llmcompressor torch --extra-index-url https://download.pytorch.org/whl/cpu
    cd /tmp && /tmp/lc/bin/python /path/to/repo/scripts/make_llmcompressor_fixture.py [--out DIR] [--schemes a,b]

The model is a tiny random Llama built from a config (fixed seed, no hub). Calibration is GPTQ
(llmcompressor's GPTQModifier, CPU) on random token ids, passed as an already tokenized dataset
with a small word-level tokenizer as the processor (oneshot needs one when it is given a dataset).
For each scheme the directory holds what `model.save_pretrained(dir, save_compressed=True)`
writes (config.json, model.safetensors, recipe.yaml; no tokenizer) and expected.safetensors:
`input_ids`; `logits`, what llmcompressor's quantized model (its fake-quantized forward, before
saving) gives on those ids; `float_logits`, what the float model gives (the size of the
quantization's effect); for W8A8 schemes `weight_only_logits`, llmcompressor's model with its
activation quantization switched off (what its int8 weights alone give). The script also reloads each directory in transformers (its
compressed-tensors integration) and prints how far that model's logits are from the recorded ones.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

SEED, VOCAB, CALIB, SEQ = 0, 128, 16, 64
GROUP = 32


def int_args(bits: int, strategy: str, symmetric: bool = True, group_size=None, dynamic=False) -> dict:
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
            "group_size": group_size, "dynamic": dynamic}


SCHEMES = {  # name: config group (weights / input_activations), all GPTQ-calibrated
    "w4a16-group-sym": {"weights": int_args(4, "group", True, GROUP)},
    "w4a16-group-asym": {"weights": int_args(4, "group", False, GROUP)},
    "w4a16-channel-asym": {"weights": int_args(4, "channel", False)},
    "w8a8-dynamic": {"weights": int_args(8, "channel"), "input_activations": int_args(8, "token", dynamic=True)},
    "w8a8-static": {"weights": int_args(8, "channel"), "input_activations": int_args(8, "tensor")},
}


def tiny_llama(tmp: Path):
    """The float model, saved to `tmp` and loaded back: oneshot reads the config from the model's
    name_or_path."""
    import transformers

    torch.manual_seed(SEED)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=True, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(str(tmp))
    return transformers.AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()


def word_tokenizer():
    """A word-level tokenizer over the model's vocabulary: oneshot wants a processor, the dataset is
    already token ids so it is never used to encode anything."""
    import transformers
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0",
                                                bos_token="t1", eos_token="t2")


def calibration():
    from datasets import Dataset

    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(3, VOCAB, (CALIB, SEQ), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + 2)
    return torch.randint(3, VOCAB, (2, 16), generator=g)


def weight_only_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """llmcompressor's quantized model with its activation quantization switched off: what its
    quantized weights alone give (W8A8 schemes; pyllmops rounds activations by its own rule)."""
    schemes = {id(s): s for m in model.modules() if (s := getattr(m, "quantization_scheme", None)) is not None}
    saved = {k: s.input_activations for k, s in schemes.items()}
    try:
        for s in schemes.values():
            s.input_activations = None
        with torch.no_grad():
            return model(ids).logits.contiguous()
    finally:
        for k, s in schemes.items():
            s.input_activations = saved[k]


def make(name: str, out: Path) -> dict:
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors.torch import save_file

    group = {"targets": ["Linear"], **SCHEMES[name]}
    recipe = GPTQModifier(config_groups={"group_0": group}, ignore=["lm_head"], dampening_frac=0.01)
    ids = inputs()
    path = out / name
    shutil.rmtree(path, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:  # the float model's directory must outlive save_pretrained
        model = tiny_llama(Path(tmp))
        with torch.no_grad():
            float_logits = model(ids).logits
        model = oneshot(model=model, recipe=recipe, dataset=calibration(), processor=word_tokenizer(),
                        num_calibration_samples=CALIB, max_seq_length=SEQ, shuffle_calibration_samples=False)
        with torch.no_grad():
            expected = model(ids).logits.contiguous()
        record = {"input_ids": ids.contiguous(), "logits": expected, "float_logits": float_logits.contiguous()}
        if "input_activations" in SCHEMES[name]:
            record["weight_only_logits"] = weight_only_logits(model, ids)
        model.save_pretrained(str(path), save_compressed=True)
    save_file(record, str(path / "expected.safetensors"))

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(ids).logits
    qc = json.loads((path / "config.json").read_text())["quantization_config"]
    return {"scheme": name, "format": qc["format"], "files": {f.name: f.stat().st_size for f in sorted(path.iterdir())},
            "logits_absmax": float(expected.abs().max()),
            "quantization_max_abs_change": float((expected - float_logits).abs().max()),
            "activation_quantization_max_abs_change": float((expected - record["weight_only_logits"]).abs().max())
            if "weight_only_logits" in record else None,
            "transformers_reload_max_abs_diff": float((again - expected).abs().max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data" / "llmcompressor"))
    p.add_argument("--schemes", default=",".join(SCHEMES))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.schemes.split(","):
        print(json.dumps(make(name, out)), flush=True)


if __name__ == "__main__":
    main()
