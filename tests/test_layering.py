"""The package's structure as docs/architecture.md states it: imports point one way (no module
imports from a layer above its own), and every public name README.md uses exists."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pyllmops"

# Rank of each subpackage: a module may import only from ranks <= its own. The tokenizer stands
# beside the stack (it may use the compiled core, nothing else), hence its low rank.
RANKS = {
    "pyllmops._ext": 0, "pyllmops._C": 0, "pyllmops._cuda": 0, "pyllmops.kernels": 0,
    "pyllmops.tokenizer": 1, "pyllmops.ops": 1,
    "pyllmops.quant": 2, "pyllmops.formats": 2,
    "pyllmops.nn": 3,
    "pyllmops.quant.methods": 4, "pyllmops.parallel": 4,
    "pyllmops.models": 5,
    "pyllmops.commands": 6, "pyllmops.cli": 6,
    # the top-level namespace re-exports ops/ and the quantize() verb: importing it is importing them
    "pyllmops": 4,
}


def _rank(module: str) -> int:
    """Rank of the longest RANKS prefix of a dotted module name."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in RANKS:
            return RANKS[prefix]
    raise KeyError(module)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every pyllmops import in the file, lazy ones included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pyllmops"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "pyllmops":
                # `from pyllmops import x` imports the submodule x when there is one
                targets = [f"{mod}.{a.name}" for a in node.names] if mod in RANKS else [mod]
                out += [(node.lineno, t) for t in targets]
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    me = _module_name(path)
    mine = _rank(me)
    upward = [f"line {line}: {mod} (rank {_rank(mod)})" for line, mod in _imports(path)
              if not mod.startswith(me + ".") and _rank(mod) > mine]
    assert not upward, f"{me} (rank {mine}) imports from a higher layer: {upward}"


def test_rank_table_covers_every_subpackage():
    subpackages = {_module_name(p.parent) for p in PKG.rglob("__init__.py")}
    assert subpackages - {"pyllmops"} <= set(RANKS), subpackages - set(RANKS)


def test_rank_lookup_catches_an_upward_import(tmp_path):
    # the checker itself: an nn module importing the quantize() verb is flagged
    assert _rank("pyllmops.quant.methods.w8a8") > _rank("pyllmops.nn.weight_only")
    assert _rank("pyllmops.quant.packing") < _rank("pyllmops.nn.weight_only")


def _readme_names() -> set[str]:
    """`pyllmops.<name>` attributes README.md's code uses (first attribute after the package)."""
    text = (ROOT / "README.md").read_text()
    code = "\n".join(re.findall(r"```(?:python|bash)?\n(.*?)```", text, flags=re.S))
    code += "\n" + " ".join(re.findall(r"`([^`\n]+)`", text))
    return set(re.findall(r"\bpyllmops\.([A-Za-z_][A-Za-z0-9_]*)", code))


def test_every_name_the_readme_uses_exists():
    import importlib

    import pyllmops

    names = _readme_names()
    assert {"quantize", "sample", "quantize_int8"} <= names  # the parser sees the README's examples
    missing = []
    for n in sorted(names - {"_C", "_cuda"}):  # the compiled extensions: build_info() says if present
        if hasattr(pyllmops, n):
            continue
        try:  # a subpackage or module (pyllmops.models, pyllmops.tokenizer, ...)
            importlib.import_module(f"pyllmops.{n}")
        except ImportError:
            missing.append(n)
    assert not missing, f"README.md uses names that pyllmops does not have: {missing}"


def test_public_api_of_the_top_level():
    import pyllmops

    for n in pyllmops.__all__:
        assert hasattr(pyllmops, n), n
    assert {"quantize", "available_methods"} <= set(pyllmops.__all__)
    assert "w4a16-gptq" in pyllmops.available_methods()
