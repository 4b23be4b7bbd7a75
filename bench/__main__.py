"""Run the benchmark suites and print one table: op, shape, backend, time, ratio.

    python -m bench [-k EXPR] [--quick] [FILES...]

ratio = the group's baseline time / this row's time (> 1 is faster than the baseline), both
measured in this run. On a GPU in bench/roofline.py's table, rows that declare the bytes they must
move and the FLOPs they must do (extra_info "bytes", "flops", "flop_kind") also get the ideal time
at the card's datasheet limits and the fraction of it reached ("of peak"; "of measured" against
the limits this workplace measured, where known). Results (rows, machine, commit, date) go to bench/results/<host>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_name() -> str:
    """The benchmarked device (bench/conftest.py's choice): the GPU's name, else the CPU's."""
    import torch

    from bench.conftest import bench_device

    if bench_device().type == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def run_pytest(files: list[str], keyword: str | None, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-only", f"--benchmark-json={out}",
               "-o", "python_files=bench_*.py", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT),
               "--benchmark-disable-gc", "--benchmark-warmup=on"]
        if quick:
            cmd += ["--benchmark-min-rounds=3", "--benchmark-max-time=0.2"]
        if keyword:
            cmd += ["-k", keyword]
        proc = subprocess.run(cmd, cwd=ROOT)
        if not out.exists():
            raise SystemExit(f"benchmarks produced no results (pytest exit {proc.returncode})")
        data = json.loads(out.read_text())
        data["pytest_exit"] = proc.returncode
        return data


def rows_from(data: dict) -> list[dict]:
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        rows.append({
            "group": b.get("group") or b["name"], "op": info.get("op", b["name"]), "shape": info.get("shape", ""),
            "backend": info.get("backend", ""), "baseline": bool(info.get("baseline")),
            "median_s": b["stats"]["median"], "mean_s": b["stats"]["mean"], "rounds": b["stats"]["rounds"],
            **{k: info[k] for k in ("throughput", "unit", "bytes", "flops", "flop_kind") if k in info},
        })
    rows.sort(key=lambda r: (r["group"], not r["baseline"], r["median_s"]))
    base = {r["group"]: r["median_s"] for r in rows if r["baseline"]}
    for r in rows:
        r["ratio"] = base[r["group"]] / r["median_s"] if r["group"] in base else None
    return rows


def add_roofline(rows: list[dict], device_name: str) -> None:
    """Roofline columns (bench/roofline.py) for the rows that declare their bytes."""
    from bench.roofline import roofline

    for r in rows:
        if "bytes" in r:
            r.update(roofline(device_name, r["median_s"], r["bytes"], r.get("flops", 0.0), r.get("flop_kind")))


def _fmt_time(s: float) -> str:
    for unit, k in (("s", 1), ("ms", 1e3), ("us", 1e6)):
        if s * k >= 1:
            return f"{s * k:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def print_table(rows: list[dict]) -> None:
    header = ["op", "shape", "backend", "time (median)", "ratio vs baseline", "throughput"]
    roof = any("ideal_s" in r for r in rows)
    if roof:
        header += ["ideal (peak)", "of peak", "of measured"]
    body = [[r["op"], r["shape"], r["backend"] + (" (baseline)" if r["baseline"] else ""), _fmt_time(r["median_s"]),
             "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
             f"{r['throughput']:.4g} {r.get('unit', '')}" if "throughput" in r else ""]
            + ([_fmt_time(r["ideal_s"]) + f" ({r['bound']})" if "ideal_s" in r else "",
                f"{r['of_peak']:.0%}" if "of_peak" in r else "",
                f"{r['of_measured']:.0%}" if "of_measured" in r else ""] if roof else []) for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(*header)
        for line in body:
            table.add_row(*line)
        Console(width=max(140, Console().width)).print(table)
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        for line in [header, *body]:
            print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="benchmark files (default: every bench/bench_*.py)")
    p.add_argument("-k", dest="keyword", help="pytest -k expression to select benchmarks")
    p.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run, not a measurement")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON results")
    args = p.parse_args(argv)
    files = args.files or sorted(str(f) for f in HERE.glob("bench_*.py"))
    data = run_pytest(files, args.keyword, args.quick)
    rows = rows_from(data)
    device = _device_name()
    add_roofline(rows, device)
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc)
    dest = args.out / f"{socket.gethostname()}-{stamp:%Y%m%d-%H%M%S}.json"
    dest.write_text(json.dumps({
        "date": stamp.isoformat(timespec="seconds"), "commit": _commit(), "device": device,
        "machine": data.get("machine_info", {}), "torch_threads": os.environ.get("OMP_NUM_THREADS"),
        "quick": args.quick, "rows": rows}, indent=1))
    print(f"wrote {dest}", file=sys.stderr)
    return 0 if data["pytest_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
