"""What a new user looks for (issue 12): the project's files, one version, no method name in the
engine, and registry-declared reports that are checked."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest
import yaml

from kdbench import __version__
from kdbench.errors import KdbenchError
from kdbench.registry import load_registry, read_registry

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


# Occurrences of a method's name in the engine that are not method-specific code: (file, or
# "*" for any; the name; a regex its line matches; why). Kept explicit, so that any other
# occurrence fails the test below.
NOT_A_METHOD = [
    ("*", "at", r"\bnp\.add\.at\(", "numpy's ufunc.at"),
    ("*", "at", r"\bat/(both|rgb)\b", "the example cell of a <label>/<mode> argument (docs)"),
]
_CODE_BEFORE = set("./{[`=@")
_CODE_AFTER = set("/}]`=@(")


def method_names_in(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, name, token) for each method name in ``source``'s code: an identifier that is
    the name (any case: ``tokd``, ``TOKD``), and in string literals (docstrings included) the
    name as a whole word written as code (the whole string, ``tokd/both``, ``tokd.d``,
    ``{tokd}``, ````tokd````, ``kdbench.methods.tokd``) or in capitals (``OFD's``); not a
    lower-case word of running text (``give at least one``), not inside a longer word
    (``kdbench``), not in comments."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b",
                         re.IGNORECASE)
    strings = {tokenize.STRING} | ({tokenize.FSTRING_MIDDLE}
                                   if hasattr(tokenize, "FSTRING_MIDDLE") else set())
    hits = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string.lower() in names:
            hits.append((tok.start[0], tok.string.lower(), tok.string))
        elif tok.type in strings:
            text = tok.string
            for m in pattern.finditer(text):
                before = text[m.start() - 1] if m.start() else ""
                after = text[m.end():m.end() + 2]
                whole = before in "'\"" and after[:1] == before and before != ""
                code = (before in _CODE_BEFORE and before != "") or after[:1] in _CODE_AFTER \
                    or (after[:1] in ".:" and after[1:].isidentifier())
                if whole or code or (m.group().isupper() and len(m.group()) > 1):
                    line = tok.start[0] + text.count("\n", 0, m.start())
                    hits.append((line, m.group().lower(), m.group()))
    return hits


def test_the_method_name_guard_finds_names_in_code_only():
    names = {"tokd", "at", "kd", "vid", "ofd"}
    source = '''"""TOKD in a docstring; give at least one; kdbench; At most; tokd rotation."""
import kdbench.methods.tokd  # tokd in a comment
x = 1  # at
if entry.name == "kd" or mode == f"{name}/rgb" or vid.seed:
    help = "e.g. at/both or ``ofd`` or tokd.d=2, at: rgb"
class TOKD: pass
'''
    found = [(line, name) for line, name, _ in method_names_in(source, names)]
    assert found == [(1, "tokd"), (2, "tokd"), (4, "kd"), (4, "vid"), (5, "at"), (5, "ofd"),
                     (5, "tokd"), (6, "tokd")]


def test_the_engine_names_no_method():
    """No name of the registry's methods in kdbench/ (the engine); methods/ may name them."""
    names = {name.lower() for name in load_registry()}
    assert {"tokd", "kd", "crd", "ofd", "reviewkd", "rkd", "nst", "at", "sp"} <= names
    hits = [f"{p.relative_to(ROOT)}:{line}: {token}"
            for p in sorted((ROOT / "kdbench").rglob("*.py"))
            for line, name, token in method_names_in(p.read_text(encoding="utf-8"), names)
            if not _not_a_method(p.relative_to(ROOT).as_posix(), name,
                                 p.read_text(encoding="utf-8").splitlines()[line - 1])]
    assert hits == [], hits


def _not_a_method(path: str, name: str, line: str) -> bool:
    return any(where in ("*", path) and name == allowed and re.search(pattern, line)
               for where, allowed, pattern, _why in NOT_A_METHOD)


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


def _documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every `kdbench ...` command of the bash blocks of README.md and of
    docs/*.md (continuations joined, comments and `&&` chains split, shell variables given a
    value)."""
    commands = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("#")[0].split("&&"):
                    part = re.sub(r"\$\{?\w+\}?", "X", part.strip())
                    if part.startswith("kdbench "):
                        commands.append((path.relative_to(ROOT).as_posix(), part))
    return commands


def test_every_documented_command_parses():
    import shlex

    from kdbench.cli import build_parser

    commands = _documented_commands()
    assert len(commands) > 10 and any(c.startswith("kdbench predict") for _, c in commands)
    assert {"README.md", "docs/scale.md", "docs/deploy.md"} <= {f for f, _ in commands}
    for where, command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            raise AssertionError(f"{where}: `{command}` does not parse") from exc
