"""Functions run inside spawned tensor-parallel ranks (module level, so the spawn start method
can import them). Each check builds the full single-process module and its TP version from the
same seed on every rank, runs forward and backward through both on the same random input, and
returns the largest absolute difference of every output and gradient, per quantity."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyllmops.parallel import (
    ColumnParallelLinear, MergedColumnParallelLinear, ParallelLMHead, QKVParallelLinear, RowParallelLinear,
    TPGroup, VocabParallelEmbedding,
)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.detach().double() - b.detach().double()).abs().max())


def _shard(t: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    return t.chunk(world, dim)[rank]


def _inputs(*shape):
    x = torch.randn(*shape)
    return x, x.clone().requires_grad_()


def check_column(tp: TPGroup, gather: bool, bias: bool) -> dict:
    r, w = tp.rank, tp.world
    full = nn.Linear(32, 8 * w, bias=bias)
    layer = ColumnParallelLinear.from_linear(full, r, w, gather_output=gather)
    x, x_tp = _inputs(3, 5, 32)
    x.requires_grad_()
    y = full(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    y_tp = layer(x_tp)
    g_tp = g if gather else _shard(g, -1, r, w)
    (y_tp * g_tp).sum().backward()
    out = {"y": _diff(y_tp, y if gather else _shard(y, -1, r, w)), "dx": _diff(x_tp.grad, x.grad),
           "dW": _diff(layer.local.weight.grad, _shard(full.weight.grad, 0, r, w))}
    if bias:
        out["db"] = _diff(layer.local.bias.grad, _shard(full.bias.grad, 0, r, w))
    return out


def check_row(tp: TPGroup, input_is_parallel: bool, reduce_results: bool, skip_bias_add: bool) -> dict:
    r, w = tp.rank, tp.world
    full = nn.Linear(8 * w, 24, bias=True)
    layer = RowParallelLinear.from_linear(full, r, w, input_is_parallel=input_is_parallel,
                                          reduce_results=reduce_results, skip_bias_add=skip_bias_add)
    x = torch.randn(4, 8 * w, requires_grad=True)
    y = full(x)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x_tp = (_shard(x.detach(), -1, r, w) if input_is_parallel else x.detach()).clone().requires_grad_()
    y_tp = layer(x_tp)
    if skip_bias_add:
        y_tp, b = y_tp
        y_tp = y_tp + b if reduce_results else y_tp + (b if r == 0 else 0)
    if not reduce_results:  # partial sums: add them up here to compare with the full product
        import torch.distributed as dist
        summed = y_tp.detach().clone()
        dist.all_reduce(summed)
        out = {"y": _diff(summed, y)}
        (y_tp * g).sum().backward()
    else:
        out = {"y": _diff(y_tp, y)}
        (y_tp * g).sum().backward()
    dx_ref = _shard(x.grad, -1, r, w) if input_is_parallel else x.grad
    out.update(dx=_diff(x_tp.grad, dx_ref), dW=_diff(layer.local.weight.grad, _shard(full.weight.grad, 1, r, w)))
    if layer.bias.grad is not None and (reduce_results or r == 0):
        out["db"] = _diff(layer.bias.grad, full.bias.grad)
    return out


def check_mlp(tp: TPGroup) -> dict:
    """Llama MLP: fused gate/up (column) -> silu(gate) * up -> down (row): one all-reduce."""
    r, w = tp.rank, tp.world
    gate, up, down = nn.Linear(16, 12 * w, bias=False), nn.Linear(16, 12 * w, bias=False), nn.Linear(12 * w, 16, bias=False)
    gu = MergedColumnParallelLinear.from_linears([gate, up], r, w)
    dn = RowParallelLinear.from_linear(down, r, w)
    x, x_tp = _inputs(2, 3, 16)
    x.requires_grad_()
    y = down(F.silu(gate(x)) * up(x))
    g = torch.randn_like(y)
    (y * g).sum().backward()
    a, b = gu.split(gu(x_tp))
    y_tp = dn(F.silu(a) * b)
    (y_tp * g).sum().backward()
    dgu = torch.cat([_shard(gate.weight.grad, 0, r, w), _shard(up.weight.grad, 0, r, w)])
    return {"y": _diff(y_tp, y), "dx": _diff(x_tp.grad, x.grad), "dW_gate_up": _diff(gu.local.weight.grad, dgu),
            "dW_down": _diff(dn.local.weight.grad, _shard(down.weight.grad, 1, r, w))}


def check_merged_gather(tp: TPGroup) -> dict:
    r, w = tp.rank, tp.world
    a, b = nn.Linear(8, 4 * w), nn.Linear(8, 2 * w)
    layer = MergedColumnParallelLinear.from_linears([a, b], r, w, gather_output=True)
    x = torch.randn(5, 8)
    return {"y": _diff(layer(x), torch.cat([a(x), b(x)], -1))}


def check_qkv(tp: TPGroup, num_heads: int, num_kv_heads: int) -> dict:
    r, w = tp.rank, tp.world
    hd, hidden = 4, 24
    q, k, v = (nn.Linear(hidden, n * hd, bias=True) for n in (num_heads, num_kv_heads, num_kv_heads))
    layer = QKVParallelLinear.from_linears(q, k, v, num_heads, num_kv_heads, r, w)
    x, x_tp = _inputs(3, hidden)
    x.requires_grad_()
    yq, yk, yv = q(x), k(x), v(x)
    gq, gk, gv = torch.randn_like(yq), torch.randn_like(yk), torch.randn_like(yv)
    ((yq * gq).sum() + (yk * gk).sum() + (yv * gv).sum()).backward()
    lq, lk, lv = layer.split(layer(x_tp))
    qh, kvh = layer.num_heads_local, layer.num_kv_heads_local
    q0 = r * qh
    kv0 = r * kvh if num_kv_heads >= w else r // (w // num_kv_heads)
    hs = lambda t, h0, n: t[..., h0 * hd:(h0 + n) * hd]  # noqa: E731
    # Replicated KV heads: the gradient flowing into a replica is only its query heads' share,
    # which the loss must reflect -- so the KV loss is spread over the replicas.
    reps = 1 if num_kv_heads >= w else w // num_kv_heads
    loss = (lq * hs(gq, q0, qh)).sum() + ((lk * hs(gk, kv0, kvh)).sum() + (lv * hs(gv, kv0, kvh)).sum()) / reps
    loss.backward()
    layer.reduce_replicated_kv_grads()
    wg = layer.local.weight.grad
    ref_w = torch.cat([hs(q.weight.grad.T, q0, qh).T, hs(k.weight.grad.T, kv0, kvh).T, hs(v.weight.grad.T, kv0, kvh).T])
    ref_b = torch.cat([hs(q.bias.grad, q0, qh), hs(k.bias.grad, kv0, kvh), hs(v.bias.grad, kv0, kvh)])
    return {"q": _diff(lq, hs(yq, q0, qh)), "k": _diff(lk, hs(yk, kv0, kvh)), "v": _diff(lv, hs(yv, kv0, kvh)),
            "dx": _diff(x_tp.grad, x.grad), "dW": _diff(wg, ref_w), "db": _diff(layer.local.bias.grad, ref_b)}


def check_embedding_head(tp: TPGroup) -> dict:
    """Tied embedding + LM head, vocab-parallel: embed ids, a hidden op, logits shard and gathered."""
    r, w = tp.rank, tp.world
    vocab, dim = 10 * w, 8
    emb = nn.Embedding(vocab, dim)
    vp = VocabParallelEmbedding.from_embedding(emb, r, w)
    head = ParallelLMHead.from_embedding(vp)
    ids = torch.randint(0, vocab, (3, 7))
    h = emb(ids)
    logits = h.tanh() @ emb.weight.T
    g = torch.randn_like(logits)
    (logits * g).sum().backward()
    h_tp = vp(ids)
    logits_tp = head(h_tp.tanh())
    (logits_tp * _shard(g, -1, r, w)).sum().backward()
    head.gather_output = True
    full_tp = head(h_tp.detach().tanh())
    return {"h": _diff(h_tp, h), "logits": _diff(logits_tp, _shard(logits, -1, r, w)), "logits_gathered": _diff(full_tp, logits),
            "dW_tied": _diff(vp.weight.grad, _shard(emb.weight.grad, 0, r, w))}


CHECKS = {
    "column": lambda tp: check_column(tp, gather=False, bias=True),
    "column_gather": lambda tp: check_column(tp, gather=True, bias=True),
    "column_nobias": lambda tp: check_column(tp, gather=False, bias=False),
    "row": lambda tp: check_row(tp, True, True, False),
    "row_scatter": lambda tp: check_row(tp, False, True, False),
    "row_skip_bias": lambda tp: check_row(tp, True, True, True),
    "row_no_reduce": lambda tp: check_row(tp, True, False, False),
    "mlp": check_mlp,
    "merged_gather": check_merged_gather,
    "qkv_split": lambda tp: check_qkv(tp, 2 * tp.world, tp.world),
    "qkv_replicated": lambda tp: check_qkv(tp, 2 * tp.world, 1),
    "qkv_mha": lambda tp: check_qkv(tp, tp.world, tp.world),
    "embedding_head": check_embedding_head,
}


def run_checks(tp: TPGroup, seed: int) -> dict:
    out = {}
    for i, (name, check) in enumerate(CHECKS.items()):
        torch.manual_seed(seed + i)  # same modules and inputs on every rank
        out[name] = check(tp)
    return out


# ----------------------------------------------------------------------------- faults
def fault_mid_forward(tp: TPGroup, mode: str, stall_s: float = 0.0) -> str:
    """Rank 1 fails inside the forward of a 2-layer TP MLP, after the first collective; the other
    ranks go on into the row layer's all-reduce and must get a TPCommError, not hang.
    mode: "raise" (the rank raises and its process exits) or "stall" (it stops answering for
    stall_s seconds first, longer than the group timeout)."""
    import time

    torch.manual_seed(0)
    fc1 = ColumnParallelLinear.from_linear(nn.Linear(8, 8 * tp.world), tp.rank, tp.world)
    fc2 = RowParallelLinear.from_linear(nn.Linear(8 * tp.world, 8), tp.rank, tp.world)
    x = torch.randn(2, 8)
    fc2(fc1(x).relu())  # one healthy step: the group works
    h = fc1(x).relu()
    if tp.rank == 1:
        if mode == "stall":
            time.sleep(stall_s)
        raise RuntimeError("boom: rank 1 failed mid-forward")
    return str(fc2(h).shape)


def wrong_world(tp: TPGroup) -> str:
    """A layer cut for twice this run's world size: must fail in its check, before any collective."""
    layer = RowParallelLinear.from_linear(nn.Linear(8 * tp.world, 4), tp.rank, 2 * tp.world)
    layer(torch.randn(1, 4))
    return "no error"


# ----------------------------------------------------------------------------- sampling
def _sampling_cases(b: int, v: int, seed: int):
    """(name, full logits [b, v], params) cases covering every path of the vocab-parallel sampler."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.randn(b, v, generator=g) * 3
    ties = torch.randint(0, 6, (b, v), generator=g).float()  # many equal logits: tie rules matter
    r = lambda lo, hi: torch.rand(b, generator=g) * (hi - lo) + lo  # noqa: E731
    ks = torch.randint(1, 64, (b,), generator=g)
    seeds = torch.randint(-2**62, 2**62, (b,), generator=g)
    return [
        ("greedy", smooth, dict(temperature=0.0)),
        ("greedy_ties", ties, dict(temperature=0.0)),
        ("top_k", smooth, dict(temperature=r(0.3, 1.5), top_k=ks, seed=seeds, offset=7)),
        ("top_k_ties", ties, dict(temperature=r(0.5, 2.0), top_k=ks, seed=seeds)),
        ("top_k_top_p_min_p", smooth, dict(temperature=r(0.5, 1.5), top_k=ks * 8, top_p=r(0.3, 1.0),
                                           min_p=r(0.0, 0.2), seed=seeds, offset=torch.arange(b) * 3)),
        ("top_k_1", smooth, dict(temperature=1.0, top_k=1, seed=11)),
        ("no_top_k", smooth, dict(temperature=r(0.5, 1.5), top_p=r(0.5, 1.0), min_p=0.05, seed=seeds)),
        ("mixed_rows", smooth, dict(temperature=torch.where(torch.arange(b) % 3 == 0, 0.0, 0.8),
                                    top_k=torch.where(torch.arange(b) % 3 == 1, 0, 40), top_p=0.9, seed=5)),
    ]


def check_sampling(tp: TPGroup, seed: int, backends: list[str]) -> dict:
    """For each backend: sample_vocab_parallel on this rank's shard == pyllmops.sample(full)."""
    from pyllmops.ops import use_backend
    from pyllmops.ops.sampling import sample
    from pyllmops.parallel.sampling import sample_vocab_parallel

    out = {}
    for backend in backends:
        for name, full, params in _sampling_cases(16, 96 * tp.world, seed):
            shard = full.chunk(tp.world, -1)[tp.rank].contiguous()
            with use_backend(backend):
                want = sample(full, **params)
                got = sample_vocab_parallel(shard, tp.group, tp.world, **params)
            out[f"{backend}.{name}"] = int((got != want).sum())
    return out


def check_cross_entropy(tp: TPGroup, seed: int) -> float:
    from pyllmops.parallel.sampling import vocab_parallel_cross_entropy

    g = torch.Generator().manual_seed(seed)
    full = torch.randn(12, 40 * tp.world, generator=g) * 4
    target = torch.randint(0, full.shape[1], (12,), generator=g)
    got = vocab_parallel_cross_entropy(full.chunk(tp.world, -1)[tp.rank], target, tp.group, tp.world)
    return _diff(got, F.cross_entropy(full, target, reduction="none"))


# ----------------------------------------------------------------------------- the Llama
def check_llama(tp: TPGroup, seed: int, n_heads: int, n_kv_heads: int) -> dict:
    """A tiny random Llama, parallelized: prefill + cached decode logits, perplexity and the
    gradient of a training loss equal the single-process model's."""
    import copy

    from pyllmops.models import Llama, LlamaConfig
    from pyllmops.models.evaluate import perplexity
    from pyllmops.models.parallel import parallelize_llama

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32 * tp.world, dim=8 * n_heads, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      ffn_dim=16 * tp.world, max_seq_len=64)
    full = Llama(cfg)
    with torch.no_grad():
        for prm in full.parameters():
            prm.normal_(0, 0.3)
    model = parallelize_llama(copy.deepcopy(full), tp, gather_logits=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    out = {}
    with torch.no_grad():
        c_full, c_tp = full.new_cache(2, 12), model.new_cache(2, 12)
        out["prefill"] = _diff(model(ids, cache=c_tp), full(ids, cache=c_full))
        step = torch.randint(0, cfg.vocab_size, (2, 1))
        out["decode"] = _diff(model(step, cache=c_tp), full(step, cache=c_full))
    text = torch.randint(0, cfg.vocab_size, (40,))
    out["ppl_rel"] = abs(perplexity(model, text, window=16) / perplexity(full, text, window=16) - 1)
    # Training: same loss, gradients of each shard equal the full gradient's slice.
    loss_full = F.cross_entropy(full(ids).flatten(0, 1), ids.roll(-1, 1).flatten())
    loss_tp = F.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, 1).flatten())
    loss_full.backward()
    loss_tp.backward()
    out["loss"] = _diff(loss_tp, loss_full)
    mlp, mlp_full = model.layers[0].mlp, full.layers[0].mlp
    out["d_down"] = _diff(mlp.down_proj.local.weight.grad, _shard(mlp_full.down_proj.weight.grad, 1, tp.rank, tp.world))
    out["d_gate"] = _diff(mlp.gate_proj.local.weight.grad, _shard(mlp_full.gate_proj.weight.grad, 0, tp.rank, tp.world))
    attn, attn_full = model.layers[1].self_attn, full.layers[1].self_attn
    out["d_q"] = _diff(attn.q_proj.local.weight.grad, attn_full.q_proj.weight.grad[attn.q_proj.index])
    out["d_o"] = _diff(attn.o_proj.local.weight.grad, attn_full.o_proj.weight.grad[:, attn.q_proj.index])
    out["d_embed"] = _diff(model.embed_tokens.weight.grad, _shard(full.embed_tokens.weight.grad, 0, tp.rank, tp.world))
    return out


# ----------------------------------------------------------------------------- quantized
def _act_order_w4(n: int, k: int, group_size: int) -> nn.Module:
    """A W4A16 layer with a GPTQ-style act-order g_idx (groups in a shuffled channel order)."""
    from pyllmops.nn.weight_only import WeightOnlyLinear
    from pyllmops.quant.packing import Int4Weight

    g = k // group_size
    g_idx = (torch.arange(k) // group_size)[torch.randperm(k)]
    w = Int4Weight.from_values(torch.randint(0, 16, (n, k), dtype=torch.uint8), torch.rand(n, g) * 0.02 + 0.01,
                               torch.randint(0, 16, (n, g), dtype=torch.uint8), group_size, 4, g_idx)
    return WeightOnlyLinear(w, torch.randn(n))


def check_quantized(tp: TPGroup, seed: int) -> dict:
    """Quantized local matmuls: column and row shards of W8A8, W4A16 (plain and act-order) and
    W8A16 layers against the full quantized layer (max |diff| relative to max |y|)."""
    from pyllmops.nn.w8a8 import W8A8Linear
    from pyllmops.nn.weight_only import WeightOnlyLinear

    r, w = tp.rank, tp.world
    torch.manual_seed(seed)
    n, k, gs = 16 * w, 64 * w, 32
    fl = nn.Linear(k, n)
    layers = {
        "w8a8": W8A8Linear.from_linear(fl),
        "w8a8_static": W8A8Linear.from_linear(fl, act="static", input_scale=0.05),
        "w4a16": WeightOnlyLinear.from_linear(fl, bits=4, group_size=gs),
        "w4a16_act_order": _act_order_w4(n, k, gs),
        "w8a16": WeightOnlyLinear.from_linear(fl, bits=8),
    }
    x = torch.randn(5, k)
    out = {}
    for name, q in layers.items():
        y = q(x)
        scale = float(y.abs().max())
        col = ColumnParallelLinear.from_linear(q, r, w, gather_output=True)
        row = RowParallelLinear.from_linear(q, r, w)
        out[f"{name}.column"] = _diff(col(x), y) / scale
        out[f"{name}.row"] = _diff(row(_shard(x, -1, r, w)), y) / scale
        out[f"{name}.local_type"] = float(type(col.local) is type(q) and type(row.local) is type(q))
    return out
