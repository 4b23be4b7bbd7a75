"""bench/kernel_report.py's parsing and arithmetic on tool output captured from nvcc 13.0 /
Triton 3.9 (the report itself runs in CI: .ci/run), and its verdicts on hand-made rows."""
import pytest

from bench.kernel_report import (TARGETS, Entry, load_table, match, occupancy, parse_ptxas, parse_sass,
                                 parse_threads, problems, split_name)

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90a'
ptxas info    : Function properties for _Z6kernelPf
    200 bytes stack frame, 196 bytes spill stores, 196 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 200 bytes cumulative stack size, 40960 bytes smem, 400 bytes cmem[0]
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90a'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers, 384 bytes cmem[0]
"""

SASS = """\
\tcode for sm_90a
\t\tFunction : _Z6kernelPf
        /*0100*/                   HMMA.16816.F32 R4, R8, R12, R4 ;                /* 0x0000000c0804723c */
        /*0110*/                   HMMA.16816.F32 R16, R8, R14, R16 ;              /* 0x0000000e0810723c */
        /*0120*/                   IADD3 R1, R1, -0x8, RZ ;                        /* 0x0000000001017810 */
\t\tFunction : _Z5otherv
        /*0100*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ; /* 0x00000000041879f0 */
        /*0110*/                   IMMA.16832.S8.S8 R4, R8, R12, R4 ;              /* 0x0000000c0804723c */
"""

PTX = """\
.visible .entry _Z6kernelPf(
\t.param .u64 _Z6kernelPf_param_0
)
.maxntid 256, 1, 1
{
\tret;
}
.visible .entry _Z5otherv(
)
.reqntid 128
{
\tret;
}
.visible .entry _Z4freev(
)
{
\tret;
}
"""


def test_parse_ptxas_keeps_entries_only():
    res = parse_ptxas(PTXAS_LOG)
    assert set(res) == {"_Z6kernelPf", "_Z5otherv"}
    assert res["_Z6kernelPf"] == {"regs": 255, "stack": 200, "spill_stores": 196, "spill_loads": 196,
                                  "smem_static": 40960}
    assert res["_Z5otherv"]["regs"] == 30 and res["_Z5otherv"]["smem_static"] == 0


def test_parse_sass_counts_tensor_core_opcodes_per_function():
    sass = parse_sass(SASS)
    assert sass["_Z6kernelPf"] == {"HMMA.16816.F32": 2}
    assert sass["_Z5otherv"] == {"HGMMA.64x128x16.F32.BF16": 1, "IMMA.16832.S8.S8": 1}


def test_parse_threads():
    assert parse_threads(PTX) == {"_Z6kernelPf": 256, "_Z5otherv": 128}


def test_split_name():
    assert split_name("void pyllmops::cuda::(anonymous namespace)::w8a8_kernel<16, 32, 1, 4, float>(const signed "
                      "char*, long)") == ("w8a8_kernel", "16, 32, 1, 4, float")


@pytest.mark.parametrize("target, threads, regs, smem, want", [
    # 256 threads x 126 regs: 16 x 256 regs per warp -> 16 warps by registers -> 2 blocks, 16/64 warps
    ("sm_90a", 256, 126, 40960, (0.25, 2, "registers")),
    # 255 regs: 8192 per warp -> 8 warps -> 2 blocks of 4 warps
    ("sm_90a", 128, 255, 0, (0.125, 2, "registers")),
    # 100 KiB + 1 KiB reserved per block: one block of 4 warps fits in 164 KiB
    ("sm_80", 128, 32, 100 * 1024, (0.0625, 1, "shared memory")),
    # 64 threads, few registers: 32 blocks max -> 64 warps
    ("sm_80", 64, 16, 0, (1.0, 32, "blocks")),
    ("sm_90a", 1024, 32, 0, (1.0, 2, "warps")),
    ("sm_80", 128, 32, 200 * 1024, (0.0, 0, "shared memory over the per-block limit")),
])
def test_occupancy(target, threads, regs, smem, want):
    occ, blocks, limiter = occupancy(TARGETS[target], threads, regs, smem)
    assert (pytest.approx(occ), blocks, limiter) == want


def _row(**kw):
    row = dict(name="k", target="sm_90a", spill_stores=0, spill_loads=0, tensor_core_ops={}, occupancy=0.5,
               limiter="registers")
    row.update(kw)
    return row


def test_problems():
    gemm = Entry(name="k", hot=True, tensor_cores={"sm_80": ["IMMA"], "sm_90a": ["IMMA", "IGMMA"]})
    assert problems(_row(tensor_core_ops={"IGMMA.64x128x32.S32.S8.S8": 4}), gemm) == []
    assert "no tensor-core" in problems(_row(), gemm)[0]
    assert problems(_row(spill_stores=8, tensor_core_ops={"IMMA.16832.S8.S8": 2}), gemm)[0].startswith("hot kernel spills")
    # sm_80: reported as a warning, which --check does not fail on
    assert problems(_row(target="sm_80", spill_loads=4, tensor_core_ops={"IMMA.16832.S8.S8": 2}), gemm)[0].startswith(
        "warning: hot kernel spills")
    cold = Entry(name="k", tensor_cores="not expected: elementwise")
    assert problems(_row(spill_loads=4), cold) == []        # not hot: spills are reported, not failed
    assert "no entry" in problems(_row(), None)[0]
    assert "tensor_cores" in problems(_row(), Entry(name="k", tensor_cores="maybe"))[0]


def test_table_covers_the_present_kernels_and_entries_are_honest():
    table = load_table()
    for name in ("weight_only_gemv", "w8a8_kernel", "quantize_rows_kernel", "sample_kernel", "_w4a16_tc",
                 "_w8a16_matmul", "_w8a8_kernel", "_quantize_rows", "_sample_row"):
        assert match(table, name, "") is not None, name
    for name in ("_w4a16_tc", "_w8a16_matmul"):
        assert match(table, name, "DOT_F32=True BLOCK_M=16").tensor_cores.startswith("not expected")
        assert isinstance(match(table, name, "DOT_F32=False").tensor_cores, dict)
    # the CUTLASS Hopper W8A8 kernel must show wgmma (IGMMA) at sm_90a
    assert match(table, "_ZN7cutlass13device_kernelINS_4gemm6kernel13GemmUniversal", "").tensor_cores == {"sm_90a": ["IGMMA"]}
    for e in table:
        assert isinstance(e.tensor_cores, dict) or e.tensor_cores.startswith("not expected: "), e.name
