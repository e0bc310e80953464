"""What a new user looks for (issue 12): the project's files, one version, no method name in the
engine, and registry-declared reports that are checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kdbench import __version__
from kdbench.errors import KdbenchError
from kdbench.registry import read_registry

ROOT = Path(__file__).resolve().parent.parent


def test_license_citation_changelog_and_design_exist_and_the_readme_links_them():
    readme = (ROOT / "README.md").read_text()
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md", "docs/design.md"):
        assert (ROOT / name).is_file() and f"]({name})" in readme, name
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "arXiv:2302.10437" in readme
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == __version__  # one version: the citation follows kdbench
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_engine_names_no_method():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for p in (ROOT / "kdbench").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\b(tokd|vanilla|fitnet|pkt)\b", line, re.IGNORECASE)
            or re.search(r"\b(at|vid|sp)\.\w+=", line)]
    assert hits == [], hits


BAD_REPORTS = [
    ("sweeps: {rotation2: {mode: rgb, sweep: {k: []}}}", "needs sweep"),
    ("sweeps: {curves: {mode: rgb, sweep: {k: [1]}}}", "built-in report"),
    ("sweeps: {'../x': {mode: rgb, sweep: {k: [1]}}}", "a name is a word"),
    ("sweeps: {s: {mode: both, sweep: {k: [1]}}}", "is not a teacher mode of the method"),
    ("sweeps: {s: {mode: rgb, sweep: {k: [1]}, titel: x}}", "unknown key 'titel'"),
    ("traces: {t: {mode: rgb}}", "needs panels"),
    ("{sweeps: {s: {mode: rgb, sweep: {k: [1]}}}, traces: {s: {mode: rgb, panels: {a: b}}}}",
     "both a sweep and a trace"),
    ("rotation: {mode: rgb, sweep: {k: [1]}}", "a sweep is declared as sweeps"),
]


@pytest.mark.parametrize(("reports", "message"), BAD_REPORTS)
def test_declared_reports_are_checked(tmp_path, reports, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"m:\n  entry: x.py:M\n  modes: [rgb]\n  defaults: {{k: 1}}\n"
                    f"  reports: {reports if reports.startswith('{') else '{' + reports + '}'}\n")
    with pytest.raises(KdbenchError, match=re.escape(message)) as info:
        read_registry(path)
    assert "\n" not in str(info.value)


def _readme_commands() -> list[str]:
    """Every `kdbench ...` command of the README's bash blocks (continuations joined, comments
    and `&&` chains split, shell variables given a value)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("#")[0].split("&&"):
                part = re.sub(r"\$\{?\w+\}?", "X", part.strip())
                if part.startswith("kdbench "):
                    commands.append(part)
    return commands


def test_every_readme_command_parses():
    import shlex

    from kdbench.cli import build_parser

    commands = _readme_commands()
    assert len(commands) > 10 and any(c.startswith("kdbench predict") for c in commands)
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            raise AssertionError(f"README: `{command}` does not parse") from exc
