"""The architecture's rules, checked on the source: one namespace, no private names
imported across modules, no import cycle, and the number layer and hw/sim free of torch."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Source folder → import package (pyproject.toml maps them under ``quantrtl``).
PACKAGES = {"quantrtl": "quantrtl", "model": "quantrtl.model", "hw": "quantrtl.hw", "sim": "quantrtl.sim",
            "synth": "quantrtl.synth"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str], bool]]:
    """``(module, imported names, at module level)`` for every import of the project's own modules."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.split(".")[0] == "quantrtl":
                found.append((mod, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "quantrtl":
                    found.append((a.name, [], id(node) in top))
    return found


def test_no_module_imports_a_private_name():
    mods = modules()
    bad = [f"{mod} imports {n} from {src}" for mod, path in mods.items() for src, names, _ in imports(mod, path)
           for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    """Module-level imports among the project's modules form no cycle (function-level
    imports are deferred on purpose: they keep torch and Amaranth off the import path)."""
    mods = modules()
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for src, names, top in imports(mod, path):
            if not top:
                continue
            for cand in [f"{src}.{n}" for n in names] + [src]:
                if cand in mods and cand != mod:
                    deps.add(cand)
                    break
        graph[mod] = deps
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_number_layer_hw_and_golden_load_no_torch():
    code = ("import sys, quantrtl.hw, quantrtl.hw.verilog, quantrtl.hw.network, quantrtl.sim.golden, "
            "quantrtl.model.numbers.artifact, quantrtl.model.numbers.families, quantrtl.model.numbers.size; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_number_layer_imports_neither_torch_nor_amaranth():
    """Every module of ``model/numbers`` imports only NumPy, the standard library and
    its own layer (the pure layer every stage may read)."""
    allowed = {"numpy", "quantrtl"} | set(sys.stdlib_module_names)
    bad = []
    for path in sorted((ROOT / "model" / "numbers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for n in names:
                if n.split(".")[0] not in allowed or (n.startswith("quantrtl") and not (
                        n.startswith("quantrtl.model.numbers") or n.startswith("quantrtl.util"))):
                    bad.append(f"{path.name}: {n}")
    assert not bad, bad


@pytest.mark.slow
def test_installed_distribution_claims_only_quantrtl(tmp_path):
    """``pip install .`` puts one top-level package, ``quantrtl``, into site-packages."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", ".hypothesis"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, text=True)
    top = sorted(p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))
                 and p.name != "bin" and p.name != "__pycache__")
    assert top == ["quantrtl"], top
    pkgs = {p.relative_to(target).as_posix() for p in (target / "quantrtl").rglob("__init__.py")}
    for sub in ("hw", "sim", "synth", "model", "model/numbers", "model/training", "util"):
        assert f"quantrtl/{sub}/__init__.py" in pkgs
    assert (target / "quantrtl" / "model" / "data" / "digits_cnn.pt").is_file()
