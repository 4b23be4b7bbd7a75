"""kernels/triton/w4a16.py compiled without a GPU (Triton's compiler with an explicit GPUTarget, the
ptxas / cuobjdump that ship with Triton): for sm_90a and sm_80 its decode configs must run their
products on tensor cores (wgmma with the dequantized weight as the register A operand / HMMA),
pipeline the weight through cp.async (LDGSTS) and spill nothing. Integer arguments are
specialized as a launch on real shapes specializes them (pointers 16-byte aligned, N, K, G,
strides multiples of 16), since that is the code a GPU runs."""
import json
import os
import subprocess
import sys

import pytest

# Runs in a child process: the test session sets TRITON_INTERPRET=1, under which kernels are not
# compilable JIT functions.
_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pyllmops.kernels import w4a16

arch, dtype, block_m = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = w4a16.choose_config(block_m, 8192, 8192, 128, False, 132)
sig = {"x_ptr": "*" + dtype, "q_ptr": "*u8", "s_ptr": "*" + dtype, "z_ptr": "*u8", "gidx_ptr": "*i32",
       "out_ptr": "*" + dtype, "M": "i32", "N": "i32", "K": "i32", "G": "i32", "group_size": "i32",
       "k_per_split": "i32", "stride_xm": "i32"}
aligned = list(sig)[:6] + ["N", "K", "G", "group_size", "k_per_split", "stride_xm"]
attrs = {(list(sig).index(a),): [["tt.divisibility", 16]] for a in aligned}
const = dict(HAS_GIDX=False, GROUP_ALIGNED=True, DOT_F32=False, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
             BLOCK_K=cfg.block_k, NUM_STAGES=cfg.num_stages)
sig.update({k: "constexpr" for k in const})
kernel = triton.compile(ASTSource(w4a16._w4a16_tc, sig, const, attrs), target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(kernel.asm["cubin"]); f.flush()
    usage = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                           text=True, check=True).stdout
    sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name], capture_output=True,
                          text=True, check=True).stdout
ptx = kernel.asm["ptx"]
print(json.dumps({
    "regs": int(re.search(r"REG:(\d+)", usage).group(1)),
    "stack": int(re.search(r"STACK:(\d+)", usage).group(1)),
    "local": int(re.search(r"LOCAL:(\d+)", usage).group(1)),
    "sass": {op: len(re.findall(r"\b" + op + r"\b", sass)) for op in ("HMMA", "HGMMA", "LDGSTS", "STL", "LDL")},
    "wgmma_a_in_registers": bool(re.search(r"wgmma\.mma_async\S* \{[^}]*\}, \{%r", ptx)),
    "mma_sync": bool(re.search(r"mma\.sync\.aligned\.m16n8k16\S*\.f16\.f16", ptx)),
}))
"""


def _tools_present() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))


@pytest.mark.skipif(not _tools_present(), reason="triton's NVIDIA backend tools are not installed")
@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("m", [16, 64])
def test_decode_configs_use_tensor_cores_without_spills(arch, m):
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, "-c", _COMPILE, str(arch), "fp16", str(m)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert r["stack"] == 0 and r["local"] == 0 and r["sass"]["STL"] == 0 and r["sass"]["LDL"] == 0, r
    assert r["sass"]["LDGSTS"] > 0, r  # the weight goes through the cp.async pipeline
    if arch == 90:
        assert r["sass"]["HGMMA"] > 0 and r["wgmma_a_in_registers"], r
    else:
        assert r["sass"]["HMMA"] > 0 and r["mma_sync"], r
