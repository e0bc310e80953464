"""kdbench installs as a real package: the repository's methods/ as kdbench.methods, the
built-in registry as package data, no top-level `methods` (issue 11, item 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_the_wheel_works_from_any_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(dist)], check=True, timeout=300,
                   cwd=tmp_path)
    (wheel,) = dist.glob("kdbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kdbench/methods/registry.yaml" in names and "kdbench/methods/tokd.py" in names
    assert not any(n.startswith("methods/") for n in names)  # no top-level `methods` package
    packed = zipfile.ZipFile(wheel).read("kdbench/methods/registry.yaml").decode()
    assert packed == (ROOT / "registry.yaml").read_text()

    # a venv that sees this machine's torch & co. but takes kdbench from the wheel alone
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True,
                   timeout=300, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import json, kdbench.methods as m, kdbench.registry "
                            "as r; print(json.dumps([m.__file__, str(r.DEFAULT_REGISTRY)]))"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    module, registry = json.loads(where.stdout)
    assert str(env_dir) in module and str(env_dir) in registry
    entries = subprocess.run([python, "-c", "from kdbench.registry import load_registry; "
                              "print(len([e.resolve() for e in load_registry().values()]))"],
                             capture_output=True, text=True, cwd=tmp_path, env=env)
    assert entries.returncode == 0 and int(entries.stdout) >= 7, entries.stderr  # all import
    listing = subprocess.run([env_dir / "bin" / "kdbench", "methods"], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for name in load_registry():
        assert name in listing.stdout
