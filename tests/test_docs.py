"""The README stays a short user guide with the two setup commands at its top, and the rest is
an MkDocs site under docs/ that builds cleanly (`mkdocs build --strict`: no broken link, no page
left out of the nav)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMMAND_1 = "pip install -e . && kdbench run --methods all"
COMMAND_2 = 'pip install -e ".[dev]" && pytest'


def _nav_pages(nav) -> list[str]:
    """The page files an mkdocs nav names, nested sections included."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav or [] for p in _nav_pages(item)]


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    top = "\n".join(lines[:30])
    assert COMMAND_1 in top and COMMAND_2 in top
    cpu_note = top.find("download.pytorch.org/whl/cpu")
    assert 0 <= cpu_note < top.index(COMMAND_1), "the CPU-only wheel comes before command 1"


def test_ci_runs_command_2():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert COMMAND_2 in ci, ".ci/run runs exactly the README's test command"


def test_every_docs_page_is_in_the_nav_and_exists():
    config = _config()
    assert config["site_name"] == "kdbench" and config["theme"]["name"] == "material"
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav) == pages, f"in docs/, not in the nav: {sorted(set(pages) - set(nav))}; " \
                                 f"in the nav, not in docs/: {sorted(set(nav) - set(pages))}"
    assert nav[0] == "index.md"


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    missing = [p for p in _nav_pages(_config()["nav"])
               if p != "index.md" and f"](docs/{p}" not in readme]
    assert missing == [], f"README links no docs page {missing}"


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e \".[dev]\")")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "scale" / "index.html").is_file()
