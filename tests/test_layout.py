"""The package layout's rules, read from the source: the library never imports the application, no import
circles, one home per concept (arch.json's writer, the temporary-then-rename write, the local launch
command), and the README's module map names every module."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("growclip_ds", "growclip_train")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def _imports(name: str, f: Path, mods: dict) -> set[str]:
    """Modules of the two packages that ``name`` imports anywhere (function-level imports included)."""
    package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            targets = subs if len(subs) == len(node.names) else [base] + subs
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_the_library_never_imports_the_application_and_nothing_imports_in_a_circle():
    mods = _modules()
    graph = {m: _imports(m, f, mods) for m, f in mods.items()}
    assert [(m, d) for m, deps in graph.items() if m.startswith("growclip_ds")
            for d in deps if d.startswith("growclip_train")] == []
    # a circle: a module that can reach itself (package __init__ files hold no imports but growclip_ds.load's)
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"import circle through {start}"
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])


def test_one_home_per_concept():
    code = {f: f.read_text() for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py")}
    where = lambda pattern: sorted(str(f.relative_to(REPO)) for f, s in code.items() if re.search(pattern, s))  # noqa: E731
    assert where(r'"arch\.json"') == ["growclip_ds/model_folder.py"]                     # the model folder's format
    assert where(r"\.tmp\b") == ["growclip_ds/fileio.py"]                                # write, then rename
    assert where(r"deepspeed\.launcher\.runner|\"growclip_train\.torchrun\"") == ["growclip_train/local_launch.py"]
    assert where(r"torch\.distributed\.run\b") == ["growclip_train/torchrun.py"]   # torchrun, quiet on a planned stop
    assert where(r"def step_costs\(") == ["growclip_train/step_phases.py"]
    assert where(r"deepspeed\.initialize\(") == ["growclip_train/train/engine.py"]
    # training and method settings are the application's; the library's config holds arch, data and growth
    assert where(r"(?m)^class (TrainConfig|MethodConfig|RunConfig)\b") == ["growclip_train/config.py"]


def test_the_readme_module_map_names_every_module():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[:block.index("```\n", block.index("```text") + 7)]
    missing = [str(f.relative_to(REPO)) for pkg in PACKAGES for f in (REPO / pkg).rglob("*.py")
               if f.name != "__init__.py" and not re.search(rf"\b{re.escape(f.name)}\b", block)]
    assert missing == []


def test_importing_the_library_loads_no_deepspeed_and_changes_no_environment():
    """Every growclip_ds module imported in a fresh interpreter: neither deepspeed nor the application is
    loaded, and os.environ is what it was (torchvision, imported first, sets TORCHINDUCTOR_CACHE_DIR itself)."""
    import subprocess
    import sys

    code = ("import os, pkgutil, importlib, sys, torchvision; env = dict(os.environ); import growclip_ds\n"
            "for m in pkgutil.walk_packages(growclip_ds.__path__, 'growclip_ds.'): importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'growclip_train')), env == dict(os.environ))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split() == ["[]", "True"]


def test_every_file_path_the_docs_name_exists():
    """README.md and docs/*.md (not the dated reports under docs/results, which describe their day) name
    only files and folders that exist, e.g. growclip_train/gas.py, not a module that moved."""
    pattern = re.compile(r"(?<![\w./~-])((?:growclip_ds|growclip_train|benchmarks|scripts|launchers|tests|docs|ds_configs)"
                         r"/[\w./-]*\w)")
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for path in set(pattern.findall(doc.read_text())):
            if not (REPO / path).exists() and not re.search(r"[A-Z]{4}|<", path):   # NAME, DATE: placeholders
                missing.append(f"{doc.name}: {path}")
    assert missing == []
