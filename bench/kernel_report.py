"""Kernel report: what every GPU kernel costs in registers, spills, shared memory and occupancy,
and whether its SASS holds tensor-core instructions, for sm_80 and sm_90a, compiled without a GPU.

    python -m bench.kernel_report [--out FILE] [--check] [--arch sm_80 sm_90a]

CUDA: each csrc/cuda/*.cu is compiled by nvcc to a cubin per target (every template
instantiation its launchers use), with `ptxas -v`. Triton: the launches of bench/kernel_cases.py
are recorded through a stand-in driver that reports the target, then each recorded
specialization is compiled by Triton's own compiler for that target. SASS comes from cuobjdump
(the one Triton ships, or CUOBJDUMP). Occupancy is the theoretical one (CUDA occupancy calculator
rules: 256-register warp allocation, 1 KiB reserved shared memory per block) from the
registers, shared memory and threads per block.

bench/kernel_table.toml states per kernel family whether it is hot and which tensor-core
instructions it must contain. --check exits 1 when a hot kernel spills at sm_90a (at sm_80 it is
a warning), a kernel lacks the tensor-core instructions its entry requires, no entry matches a
kernel, or a Triton kernel is reached by no case. Results: JSON (bench/results/kernel_report.json
by default).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import io
import json
import math
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TC_FAMILIES = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA")  # wgmma (Hopper) and mma.sync forms


@dataclass(frozen=True)
class SM:
    """Per-SM limits of a target (CUDA C Programming Guide, compute capability tables)."""
    cap: int
    regs: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    smem: int = 0             # shared memory per SM at the largest carve-out, bytes
    smem_block: int = 0       # most one block may use (static + dynamic), bytes
    reserved_smem: int = 1024  # per block, taken by the system on sm_80+
    reg_unit: int = 256       # registers are allocated per warp in units of this
    max_regs_thread: int = 255


TARGETS = {
    "sm_80": SM(cap=80, smem=164 * 1024, smem_block=163 * 1024),
    "sm_90a": SM(cap=90, smem=228 * 1024, smem_block=227 * 1024),
}


def occupancy(sm: SM, threads: int, regs: int, smem: int) -> tuple[float, int, str]:
    """Theoretical occupancy (resident warps / max warps), resident blocks per SM and the limiter,
    for a block of `threads` threads using `regs` registers per thread and `smem` bytes of shared
    memory (static + dynamic). A block that cannot launch at all gives (0.0, 0, reason)."""
    if threads <= 0 or threads > 1024:
        return 0.0, 0, "threads"
    warps = math.ceil(threads / 32)
    if smem > sm.smem_block:
        return 0.0, 0, "shared memory over the per-block limit"
    if regs > sm.max_regs_thread:
        return 0.0, 0, "registers over the per-thread limit"
    limits = {"blocks": sm.max_blocks, "warps": sm.max_warps // warps}
    if regs:
        per_warp = math.ceil(regs * 32 / sm.reg_unit) * sm.reg_unit
        limits["registers"] = (sm.regs // per_warp) // warps
    block_smem = smem + sm.reserved_smem
    limits["shared memory"] = sm.smem // block_smem
    limiter = min(limits, key=limits.get)
    blocks = limits[limiter]
    return blocks * warps / sm.max_warps, blocks, limiter


# ----------------------------------------------------------------------------------- tools output
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                    r"(\d+) bytes spill loads")
_USED = re.compile(r"Function properties for (\S+).*?Used (\d+) registers(.*?)\n", re.S)


def parse_ptxas(log: str) -> dict[str, dict]:
    """`ptxas -v` log -> {entry name: regs, stack, spill_stores, spill_loads, smem_static}.
    Only entry functions (kernels) are kept; callee device functions have their own blocks."""
    entries = set(m.group(1) for m in _ENTRY.finditer(log))
    out = {}
    for block in re.split(r"(?=ptxas\S* info\s*: Function properties for )", log):
        props = _PROPS.search(block)
        if not props or (entries and props.group(1) not in entries):
            continue
        used = re.search(r"Used (\d+) registers(.*)", block)
        smem = re.search(r"(\d+) bytes smem", used.group(2)) if used else None
        out[props.group(1)] = {
            "regs": int(used.group(1)) if used else 0, "stack": int(props.group(2)),
            "spill_stores": int(props.group(3)), "spill_loads": int(props.group(4)),
            "smem_static": int(smem.group(1)) if smem else 0}
    return out


def parse_threads(ptx: str) -> dict[str, int]:
    """PTX -> {entry: threads per block} from .maxntid / .reqntid (set by __launch_bounds__ or Triton)."""
    out = {}
    for m in re.finditer(r"\.entry\s+(\S+?)\s*\((.*?)\)\s*((?:\.\w+[^\n{]*\n\s*)*)\{", ptx, re.S):
        nt = re.search(r"\.(?:maxntid|reqntid)\s+(\d+)(?:,\s*(\d+))?(?:,\s*(\d+))?", m.group(3))
        if nt:
            out[m.group(1)] = math.prod(int(v) for v in nt.groups() if v)
    return out


def parse_sass(sass: str) -> dict[str, dict[str, int]]:
    """`cuobjdump -sass` text -> {function: {tensor-core opcode with modifiers: count}}."""
    out: dict[str, dict[str, int]] = {}
    current = None
    op = re.compile(r"\b(" + "|".join(TC_FAMILIES) + r")(\.[\w.]+)?")
    for line in sass.splitlines():
        head = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if head:
            current = head.group(1)
            out.setdefault(current, {})
            continue
        if current and "/*" in line:
            for m in op.finditer(line.split(";")[0]):
                out[current][m.group(0)] = out[current].get(m.group(0), 0) + 1
    return out


def tc_families(ops: dict[str, int]) -> set[str]:
    return {o.split(".")[0] for o in ops}


# ----------------------------------------------------------------------------------- expectations
@dataclass
class Entry:
    name: str
    hot: bool = False
    tensor_cores: object = None
    when: str | None = None
    threads: int | None = None
    dynamic_smem: int = 0


def load_table(path: Path = HERE / "kernel_table.toml") -> list[Entry]:
    return [Entry(**e) for e in tomllib.loads(path.read_text())["kernel"]]


def match(table: list[Entry], name: str, variant: str) -> Entry | None:
    for e in table:
        if re.search(e.name, name) and (e.when is None or re.search(e.when, variant)):
            return e
    return None


# Targets where a hot kernel's spill fails the check (the H100/H200 the GPU goals are set on); at
# the others it is a warning, printed and kept in the JSON.
SPILL_FAILS = {"sm_90a"}


def problems(row: dict, entry: Entry | None) -> list[str]:
    """What --check fails on for one compiled kernel row ("warning: ..." items do not fail it)."""
    if entry is None:
        return [f"no entry in bench/kernel_table.toml matches {row['name']}"]
    out = []
    if entry.hot and (row["spill_stores"] or row["spill_loads"]):
        msg = f"hot kernel spills ({row['spill_stores']} B stores, {row['spill_loads']} B loads)"
        out.append(msg if row["target"] in SPILL_FAILS else f"warning: {msg}")
    want = entry.tensor_cores
    if isinstance(want, dict):
        need = set(want.get(row["target"], []))
        if need and not need & tc_families(row["tensor_core_ops"]):
            out.append(f"no tensor-core instruction of {sorted(need)} in its SASS")
    elif not (isinstance(want, str) and want.startswith("not expected")):
        out.append("kernel_table.toml entry must give tensor_cores per target or say 'not expected: why'")
    if row["occupancy"] == 0:
        out.append(f"cannot launch: {row['limiter']}")
    return out


# ----------------------------------------------------------------------------------- tools
def _triton_bin(tool: str) -> str | None:
    try:
        import triton

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool
        return str(p) if p.exists() else None
    except ImportError:
        return None


def tool(name: str) -> str | None:
    """A CUDA binary: $NAME (upper case) if set, then PATH, CUDA_HOME, Triton's bundled copy."""
    env = os.environ.get(name.upper())
    if env:
        return env
    for cand in (shutil.which(name), f"{os.environ.get('CUDA_HOME', '/usr/local/cuda')}/bin/{name}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return _triton_bin(name)


def sass_of(cubin: Path) -> dict[str, dict[str, int]]:
    exe = tool("cuobjdump")
    if exe is None:
        raise SystemExit("kernel_report: no cuobjdump (pip install triton, or nvidia-cuda-cuobjdump and set CUOBJDUMP)")
    return parse_sass(subprocess.run([exe, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout)


def demangle(names: list[str]) -> dict[str, str]:
    exe = shutil.which("cu++filt") or shutil.which("c++filt")
    if not exe or not names:
        return {n: n for n in names}
    out = subprocess.run([exe], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


# ----------------------------------------------------------------------------------- CUDA
def cuda_rows(targets: list[str], table: list[Entry], jobs: int) -> list[dict]:
    nvcc = tool("nvcc")
    if nvcc is None:
        print("kernel_report: no nvcc: CUDA kernels SKIPPED", file=sys.stderr)
        return []
    work = [(cu, t, ()) for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")) for t in targets]
    # The Hopper W8A8 kernel (CUTLASS 3.x), sm_90a only and only where CUTLASS's headers are, with
    # the flags CMakeLists.txt builds it with.
    cutlass = _cutlass_include()
    if cutlass and "sm_90a" in targets:
        work += [(cu, "sm_90a", (f"-I{cutlass}", "-DNDEBUG", "-fmad=false"))
                 for cu in sorted((ROOT / "csrc" / "cuda" / "sm90").glob("*.cu"))]
    elif not cutlass:
        print("kernel_report: no CUTLASS headers (pip install nvidia-cutlass): csrc/cuda/sm90 SKIPPED", file=sys.stderr)
    with ThreadPoolExecutor(jobs) as pool:
        return [r for rows in pool.map(lambda a: _cuda_one(nvcc, *a, table), work) for r in rows]


def _cutlass_include() -> str:
    """CUTLASS's include dir, found as setup.py finds it ("" when there is none)."""
    import importlib.util

    path = os.environ.get("PYLLMOPS_CUTLASS_INCLUDE")
    if not path:
        spec = importlib.util.find_spec("cutlass_library")
        path = str(Path(spec.origin).parent / "source" / "include") if spec and spec.origin else ""
    return path if path and Path(path, "cutlass", "cutlass.h").exists() else ""


def _cuda_one(nvcc: str, cu: Path, target: str, extra: tuple, table: list[Entry]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        arch = target.replace("sm_", "")
        done = subprocess.run([nvcc, "-std=c++17", f"-I{ROOT / 'csrc'}", *extra, "--expt-relaxed-constexpr", "-O3",
                               "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v", "--keep", "--keep-dir", tmp, str(cu),
                               "-o", str(cubin)], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"kernel_report: nvcc failed on {cu.name} for {target}:\n{done.stderr[-3000:]}")
        res = parse_ptxas(done.stderr)
        threads = {}
        for ptx in Path(tmp).glob("*.ptx"):
            threads.update(parse_threads(ptx.read_text()))
        sass = sass_of(cubin)
    names = demangle(sorted(res))
    rows = []
    for mangled, r in sorted(res.items()):
        base, variant = split_name(names[mangled])
        entry = match(table, base, variant)
        n_threads = threads.get(mangled) or (entry.threads if entry else None) or 0
        dyn = entry.dynamic_smem if entry else 0
        rows.append(_row("cuda", str(cu.relative_to(ROOT)), base, variant, target, n_threads, r, dyn,
                         sass.get(mangled, {}), entry))
    return rows


def split_name(demangled: str) -> tuple[str, str]:
    """'void ns::(anonymous namespace)::kern<T, 4>(args)' -> ('kern', 'T, 4')."""
    full = re.sub(r"^void\s+", "", demangled.replace("(anonymous namespace)::", ""))
    head = re.match(r"[\w:]+", full)
    name = head.group(0).split("::")[-1] if head else full
    targs = re.match(r"[\w:]+<(.*)>\s*\(", full)
    return name, targs.group(1) if targs else ""


def _row(kind, source, name, variant, target, threads, res, dyn_smem, tc_ops, entry) -> dict:
    occ, blocks, limiter = occupancy(TARGETS[target], threads, res["regs"], res["smem_static"] + dyn_smem)
    row = {"kind": kind, "source": source, "name": name, "variant": variant, "target": target,
           "threads": threads, **res, "smem_dynamic": dyn_smem, "occupancy": round(occ, 4),
           "blocks_per_sm": blocks, "limiter": limiter, "tensor_core_ops": tc_ops,
           "hot": bool(entry and entry.hot),
           "tensor_cores_expected": entry.tensor_cores if entry else None}
    row["problems"] = problems(row, entry)
    return row


# ----------------------------------------------------------------------------------- Triton
@dataclass
class Launch:
    fn: object
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict = field(default_factory=dict)

    def variant(self) -> str:
        """'fp16/u8/fp16/u8/i32/fp32 INT4=True BLOCK_M=16 G=1 w8 s2': the pointer dtypes in
        argument order, the declared constexprs, the integer arguments specialized as 1, warps and
        stages."""
        names = [p.name for p in self.fn.params]
        types = "/".join(v[1:] for v in self.signature.values() if v.startswith("*"))
        declared = {p.num for p in self.fn.params if p.is_constexpr}
        ce = " ".join(f"{names[k[0]]}={v}" for k, v in sorted(self.constexprs.items()) if k[0] in declared)
        ones = "".join(f" {names[k[0]]}=1" for k in sorted(self.constexprs) if k[0] not in declared)
        return f"{types} {ce}{ones} w{self.options['num_warps']} s{self.options['num_stages']}"


def triton_kernels() -> dict[str, object]:
    """Every @triton.jit kernel in pyllmops.kernels ('module.name' -> JITFunction); functions
    called from another jit function's body are helpers, not kernels."""
    from triton.runtime.jit import JITFunction

    import pyllmops.kernels as pkg

    found = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"{pkg.__name__}.{mod.name}")
        for attr, obj in vars(m).items():
            while obj is not None and not isinstance(obj, JITFunction) and hasattr(obj, "fn"):
                obj = obj.fn  # Autotuner / Heuristics wrap the JITFunction
            if isinstance(obj, JITFunction) and obj.__module__ == m.__name__:
                found[f"{mod.name}.{attr}"] = obj
    bodies = {k: f.src for k, f in found.items()}
    return {k: f for k, f in found.items()
            if not any(re.search(rf"\b{re.escape(f.__name__)}\s*\(", src) for o, src in bodies.items() if o != k)}


class _TargetDriver:
    """Enough of a Triton driver for specialization and compilation: no device is touched."""

    def __init__(self, cap: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", cap, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def record_launches(cap: int, kernels: dict) -> list[Launch]:
    """Run bench/kernel_cases.py with compilation replaced by a recorder; autotuned kernels
    record every config their pruning keeps."""
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from bench import kernel_cases

    seen: dict[tuple, Launch] = {}

    def capture(self, key, signature, device, constexprs, options, attrs, warmup):
        # One row per configuration: pointer dtypes, declared constexprs, integer arguments equal to
        # 1 (unit strides: a layout), warps, stages. Divisibility by 16 is not told apart.
        declared = {p.num for p in self.params if p.is_constexpr}
        config = (self, tuple(v for v in signature.values() if v.startswith("*")),
                  tuple(sorted((k, repr(v)) for k, v in constexprs.items() if k[0] in declared)),
                  tuple(k for k, v in signature.items() if v == "constexpr"), options.num_warps, options.num_stages)
        seen.setdefault(config, Launch(self, dict(signature), dict(constexprs), dict(attrs), dict(options.__dict__)))
        return None

    def every_config(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        for config in self.prune_configs(kwargs):
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    for f in kernels.values():
        f.device_caches.clear()
    saved = JITFunction._do_compile, Autotuner.run
    saved_driver = driver._active  # reset_active() would look for a real GPU driver
    driver.set_active(_TargetDriver(cap))
    JITFunction._do_compile, Autotuner.run = capture, every_config
    try:
        for case in kernel_cases.CASES:
            case()
    finally:
        JITFunction._do_compile, Autotuner.run = saved
        driver._active = saved_driver
        for f in kernels.values():
            f.device_caches.clear()
    return list(seen.values())


def compile_launch(launch: Launch, target: str) -> tuple[dict, str, int, int, dict]:
    """One recorded specialization compiled for `target` -> (ptxas resources, kernel name,
    dynamic shared memory, warps, tensor-core opcodes of its SASS)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    log = io.StringIO()
    # Compiled afresh (no cache hit), so ptxas runs and its -v log can be read.
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        k = triton.compile(ASTSource(launch.fn, launch.signature, launch.constexprs, launch.attrs),
                           target=GPUTarget("cuda", TARGETS[target].cap, 32), options=launch.options)
    name = k.metadata.name
    res = parse_ptxas(log.getvalue())
    if name not in res:
        raise SystemExit(f"kernel_report: no ptxas resource line for {name}:\n{log.getvalue()[-2000:]}")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        sass = sass_of(Path(f.name))
    return res[name], name, k.metadata.shared, k.metadata.num_warps, sass.get(name, {})


_WORK: list[tuple[Launch, str]] = []  # read by forked workers (Launch holds a JITFunction: not picklable)


def _compile_work(i: int):
    return compile_launch(*_WORK[i])


def triton_rows(targets: list[str], table: list[Entry], jobs: int) -> tuple[list[dict], list[str]]:
    """Rows for every recorded Triton specialization, and the kernels no case reached. Compiles
    run in `jobs` forked processes."""
    import multiprocessing

    os.environ.pop("TRITON_INTERPRET", None)
    kernels = triton_kernels()
    _WORK[:] = [(launch, t) for t in targets for launch in record_launches(TARGETS[t].cap, kernels)]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_work, range(len(_WORK)), chunksize=1)
    else:
        results = [_compile_work(i) for i in range(len(_WORK))]
    rows = []
    for (launch, target), (res, _, shared, warps, tc_ops) in zip(_WORK, results):
        name, variant = launch.fn.__name__, launch.variant()
        rows.append(_row("triton", f"kernels/{launch.fn.__module__.rsplit('.', 1)[-1]}.py", name, variant, target,
                         warps * 32, res, shared, tc_ops, match(table, name, variant)))
    reached = {launch.fn for launch, _ in _WORK}
    return rows, [k for k, f in kernels.items() if f not in reached]


# ----------------------------------------------------------------------------------- output
def tc_text(row: dict) -> str:
    if row["tensor_core_ops"]:
        return " ".join(f"{op}x{n}" for op, n in sorted(row["tensor_core_ops"].items()))
    want = row["tensor_cores_expected"]
    return "none" + (" (not expected)" if isinstance(want, str) and want.startswith("not expected") else "")


def print_table(rows: list[dict], file=sys.stdout) -> None:
    header = ["kernel", "variant", "target", "thr", "regs", "spill st/ld", "smem st+dyn", "occupancy", "tensor cores",
              "status"]
    body = [[r["name"], r["variant"], r["target"], str(r["threads"]), str(r["regs"]),
             f"{r['spill_stores']}/{r['spill_loads']}", f"{r['smem_static']}+{r['smem_dynamic']}",
             f"{r['occupancy']:.0%} ({r['blocks_per_sm']} blk, {r['limiter']})", tc_text(r),
             "; ".join(r["problems"]) or ("ok" + (" (hot)" if r["hot"] else ""))] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    for line in [header, *body]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip(), file=file)


def _versions() -> dict:
    out = {}
    nvcc = tool("nvcc")
    if nvcc:
        out["nvcc"] = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_report", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "kernel_report.json")
    p.add_argument("--arch", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--check", action="store_true", help="exit 1 on any problem (what CI runs)")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="parallel compiles")
    args = p.parse_args(argv)
    table = load_table()
    rows = cuda_rows(args.arch, table, args.jobs)
    t_rows, missed = triton_rows(args.arch, table, args.jobs)
    rows += t_rows
    rows.sort(key=lambda r: (r["kind"], r["name"], r["variant"], r["target"]))
    print_table(rows)
    found = [f"{r['name']} [{r['variant']}] {r['target']}: {msg}" for r in rows for msg in r["problems"]]
    found += [f"Triton kernel {k} is reached by no case in bench/kernel_cases.py" for k in missed]
    errors = [f for f in found if ": warning: " not in f]
    warnings = [f for f in found if ": warning: " in f]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
        "tools": _versions(), "targets": {t: asdict(TARGETS[t]) for t in args.arch}, "rows": rows,
        "problems": errors, "warnings": warnings}, indent=1) + "\n")
    print(f"kernel_report: {len(rows)} kernel variants, {len(errors)} problems, {len(warnings)} warnings; wrote "
          f"{args.out}", file=sys.stderr)
    for e in errors:
        print(f"  PROBLEM {e}", file=sys.stderr)
    for w in warnings:
        print(f"  WARNING {w.replace(': warning: ', ': ')}", file=sys.stderr)
    return 1 if errors and args.check else 0


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
