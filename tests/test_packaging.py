"""kdbench installs as a real package: the repository's methods/ as kdbench.methods, the
built-in registry as package data, no top-level `methods` (issue 11, item 2); its wheel
declares every distribution its code imports and works with only those installed."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections import defaultdict
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from kdbench.registry import DEFAULT_REGISTRY, load_registry

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")


def test_every_engine_package_is_listed_for_installation():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "kdbench").rglob("*.py") if "__pycache__" not in p.parts}
    assert set(setup["packages"]) == on_disk | {"kdbench.methods"}
    assert setup["package-dir"] == {"kdbench.methods": "methods"}


def test_the_built_in_registry_is_the_repository_file():
    assert DEFAULT_REGISTRY.parent.resolve() == (ROOT / "methods").resolve()  # this checkout
    assert DEFAULT_REGISTRY.read_text() == (ROOT / "registry.yaml").read_text()
    assert all(e.entry.startswith("kdbench.methods.") for e in load_registry().values())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_files(dist: importlib.metadata.Distribution) -> set[str]:
    """The first parts of a distribution's installed files: its packages, modules, extension
    modules, .dist-info and .libs folders (not its scripts, not .pth files)."""
    return {f.parts[0] for f in dist.files or []
            if f.parts[0] not in ("..", "__pycache__") and not f.parts[0].endswith(".pth")}


def _top_level(dist: importlib.metadata.Distribution) -> set[str]:
    """The import names a distribution provides: its top_level.txt and top-level files."""
    names = set((dist.read_text("top_level.txt") or "").split())
    for top in _top_files(dist):
        names.add(top.split(".")[0] if top.endswith((".py", ".so", ".pyd")) else top)
    return names


def _distributions_of_imports() -> dict[str, set[str]]:
    """Import name -> the installed distributions providing it (dlib -> dlib-bin, whose
    top_level.txt names only its extension module, PIL -> pillow, yaml -> pyyaml)."""
    found: dict[str, set[str]] = defaultdict(set)
    for name, dists in importlib.metadata.packages_distributions().items():
        found[name] |= {_canonical(d) for d in dists}
    for dist in importlib.metadata.distributions():
        for name in _top_level(dist):
            found[name].add(_canonical(dist.metadata["Name"]))
    return found


def _imports() -> dict[str, str]:
    """Top-level module of every absolute import in kdbench/ and methods/ -> one file importing
    it (lazy imports inside functions included)."""
    modules: dict[str, str] = {}
    for path in sorted([*(ROOT / "kdbench").rglob("*.py"), *(ROOT / "methods").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                modules.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return modules


def undeclared_imports(requires: list[str]) -> list[str]:
    """The third-party modules kdbench's code imports whose distribution ``requires``
    (Requires-Dist lines, extras included) does not name. A module no installed distribution
    provides (an extra's, not installed here) must be named like its declared distribution."""
    declared = {_canonical(Requirement(r).name) for r in requires}
    providers = _distributions_of_imports()
    return [f"{module} (imported by {where}; distribution "
            f"{', '.join(sorted(providers.get(module, ()))) or 'not installed'})"
            for module, where in sorted(_imports().items())
            if module not in sys.stdlib_module_names and module not in ("kdbench", "methods")
            and not (providers.get(module) or {_canonical(module)}) & declared]


def test_every_imported_distribution_is_declared_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = [*project["dependencies"],
                *(r for extra in project["optional-dependencies"].values() for r in extra)]
    assert {"torch", "PIL", "yaml", "dlib"} <= set(_imports())  # the scan sees the imports
    assert undeclared_imports(requires) == [], "imported but not in [project] dependencies"


def _core_closure(requires: list[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions of ``requires`` (Requires-Dist lines; those of extras are
    left out) and everything they require in turn on this platform."""
    todo = [Requirement(r) for r in requires]
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({"extra": ""})]
    missing = []
    for req in todo:
        try:
            importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(req.name)
    assert not missing, f"declared dependencies not installed here: {missing}"
    seen: dict[str, importlib.metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:  # not needed on this platform
            continue
        if _canonical(dist.metadata["Name"]) in seen:
            continue
        seen[_canonical(dist.metadata["Name"])] = dist
        extras = {"", *req.extras}
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return list(seen.values())


def _declared_only(requires: list[str], view: Path) -> Path:
    """A folder of links to the files of the wheel's declared dependencies (and theirs) alone,
    wherever this environment keeps them: no other distribution, not this checkout, not the
    editable kdbench."""
    view.mkdir()
    for dist in _core_closure(requires):
        assert _canonical(dist.metadata["Name"]) != "kdbench"
        for top in _top_files(dist):
            source = Path(dist.locate_file(top))
            if source.exists() and not (view / top).exists():
                (view / top).symlink_to(source)
    return view


def _installed(requirement: str) -> bool:
    req = Requirement(requirement)
    try:
        return importlib.metadata.version(req.name) in req.specifier
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
def test_the_wheel_works_from_any_directory(tmp_path):
    dist = tmp_path / "dist"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    offline = ["--no-build-isolation"] if all(map(_installed, build)) else []  # else: fetched
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", *offline,
                    "-q", "-w", str(dist)], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = dist.glob("kdbench-*.whl")
    packed = zipfile.ZipFile(wheel)
    names = packed.namelist()
    assert "kdbench/methods/registry.yaml" in names and "kdbench/methods/tokd.py" in names
    assert not any(n.startswith("methods/") for n in names)  # no top-level `methods` package
    assert packed.read("kdbench/methods/registry.yaml").decode() == \
        (ROOT / "registry.yaml").read_text()
    (metadata_file,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(packed.read(metadata_file).decode())
    requires = metadata.get_all("Requires-Dist") or []
    # every third-party module kdbench imports is the wheel's dependency (or an extra's)
    assert undeclared_imports(requires) == [], "imported but not in the wheel's Requires-Dist"

    # a venv without system site packages that sees only the wheel's declared dependencies
    # (and theirs) of this environment, through a .pth file, and kdbench from the wheel alone
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    view = _declared_only(requires, tmp_path / "declared")
    (Path(purelib) / "declared-dependencies.pth").write_text(f"{view}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300,
                   cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def run(*args: str | Path) -> str:
        out = subprocess.run(list(args), capture_output=True, text=True, cwd=elsewhere,
                             env=env, timeout=300)
        assert out.returncode == 0, f"{args[-1]}: {out.stderr[-3000:]}"
        return out.stdout

    version = run(env_dir / "bin" / "kdbench", "--version")
    assert metadata["Version"] in version
    where = json.loads(run(python, "-c", _IMPORT_EVERY_MODULE))
    outer = {str(ROOT), sysconfig.get_paths()["purelib"]}
    assert not outer & set(where["sys.path"]), where["sys.path"]  # not this env, not the checkout
    assert all(f.startswith(str(env_dir)) for f in where["files"].values()), where["files"]
    assert {"kdbench.cli", "kdbench.methods.tokd", "kdbench.registry"} <= set(where["files"])
    assert where["registry"].startswith(str(env_dir)) and where["entries"] >= 7
    assert where["undeclared"] == []  # installed here, but no dependency of the wheel's
    listing = run(env_dir / "bin" / "kdbench", "methods")
    for name in load_registry():
        assert name in listing


# every module of the installed kdbench imports (their extras' packages are imported lazily)
# and every registry entry resolves
_IMPORT_EVERY_MODULE = """
import importlib, importlib.util, json, pkgutil, sys
import kdbench, kdbench.methods
from kdbench.registry import DEFAULT_REGISTRY, load_registry
names = [m.name for m in pkgutil.walk_packages(kdbench.__path__, "kdbench.")
         if not m.name.endswith("__main__")]
files = {n: importlib.import_module(n).__file__ for n in ["kdbench", *names]}
print(json.dumps({"files": files, "sys.path": sys.path, "registry": str(DEFAULT_REGISTRY),
                  "entries": len([e.resolve() for e in load_registry().values()]),
                  "undeclared": [m for m in ("pytest", "onnxruntime")
                                 if importlib.util.find_spec(m) is not None]}))
"""
