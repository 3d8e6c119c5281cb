"""Documentation references resolve, and no build-machine path leaks into the repository.

* Every citation of a Markdown document in code (``*.py``, ``*.js``, ``*.sh``, ``*.json``), in the Markdown files
  and in every ``adasde ... --help`` text names a file that exists in the repository, and every section it names
  (``docs/ALGORITHMS.md section 3.5``, ``docs/HOSTS.md sections A1-A7 and B5``, ``docs/ARCHITECTURE.md, "Errors"``)
  is a heading of that file.
* No tracked text file (nor the JSON header of a tracked ``.safetensors`` file) contains an absolute path of a build
  machine, and nothing cites the private background notes the documents were written from.

A failure names ``file:line`` and the offending text.  To fix a citation, point it at a heading that exists
(``grep -n '^#' docs/*.md``) in the form ``docs/<name>.md section <label>``, or add the section to the document.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".js", ".sh", ".json", ".md"}
TEXT_SUFFIXES = CODE_SUFFIXES | {".toml", ".ini", ".txt", ".yaml", ".yml", ".cfg", ".html", ".css", ".svg"}
SKIP_DIRS = {".git", ".venv", ".cache", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist"}

# ----------------------------------------------------------------------------------------------------- the matcher
# A Markdown path: not part of a URL or a longer path, not a template such as ``<name>.md`` or ``{name}.md``.
_PATH = r"(?<![\w/.<{$-])(?P<path>(?:[\w.-]+/)*[\w-]+\.md)(?![\w/])"
_LABEL = r"(?:[A-F]\d*(?:\.\d+)*|\d+(?:\.\d+)*)(?![\w(])"
_SEP = r"(?:\s*(?:,|/|-|\u2013)\s*(?:and\s+)?|\s+and\s+|\s+to\s+)"
_GAP = r"`?,?[ \t]*(?:\n[ \t]*(?:#|//|\*)?[ \t]*)?"
CITATION = re.compile(
    _PATH
    + r"(?:,[ \t]*\"(?P<quoted>[^\"\n]{2,60})\""  # docs/ARCHITECTURE.md, "Errors"
    + r"|" + _GAP + r"(?P<kw>sections?|\u00a7)[ \t]*(?P<labels>" + _LABEL + r"(?:" + _SEP + _LABEL + r")*)?"
    + r"|" + _GAP + r"(?P<bare>\d+\.\d+(?:\.\d+)*|[A-F]\d+)(?![\w(]))?"  # docs/ALGORITHMS.md 3.7 (no keyword)
)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)
_SPLIT = re.compile(r"\s*(,|/|\band\b|\bto\b|-|\u2013)\s*")


def is_document_reference(path: str) -> bool:
    """A path with a folder, or an upper-case document name (README.md, ALGORITHMS.md).  A bare lower-case name
    (``solvers.md``) is a file the code writes, not a citation."""
    return "/" in path or re.fullmatch(r"[A-Z][A-Z0-9_]*\.md", path) is not None


def labels_of(text: str) -> list[str]:
    """``"A1-A7 and B5"`` -> ``["A1", "A7", "B5"]`` (ranges are checked at both ends)."""
    return [p for p in _SPLIT.split(text.strip()) if p and not _SPLIT.fullmatch(p)]


def resolve(path: str, source: Path | None) -> Path | None:
    """The repository file ``path`` names, relative to the citing file's folder or to the repository root."""
    bases = ([source.parent] if source is not None else []) + [ROOT]
    for base in bases:
        p = (base / path).resolve()
        if p.is_file() and (p == ROOT or ROOT in p.parents):
            return p
    return None


def headings(doc: Path) -> list[str]:
    return _HEADING.findall(doc.read_text(encoding="utf-8"))


def heading_has_label(heads: list[str], label: str) -> bool:
    """A heading whose first word is the label (``### 3.5 Distillation``, ``### A7. The UNet``, ``## C. WebUI``)."""
    return any(h.split()[0].rstrip(".:") == label for h in heads if h.split())


def check_text(text: str, source: Path | None, where: str) -> list[str]:
    """Problems of every document citation in ``text`` (``where`` names the source in messages)."""
    problems: list[str] = []
    for m in CITATION.finditer(text):
        path = m.group("path")
        if not is_document_reference(path):
            continue
        line = text.count("\n", 0, m.start()) + 1
        at = f"{where}:{line}: {m.group(0).strip()!r}"
        doc = resolve(path, source)
        if doc is None:
            problems.append(f"{at}: {path} is not a file of the repository (cite docs/<name>.md)")
            continue
        if m.group("quoted"):
            if not any(m.group("quoted").lower() in h.lower() for h in headings(doc)):
                problems.append(f"{at}: {doc.relative_to(ROOT)} has no heading containing {m.group('quoted')!r}")
            continue
        if m.group("kw") and not m.group("labels"):
            problems.append(f"{at}: 'section' is not followed by a label such as 3.5 or A7")
            continue
        wanted = labels_of(m.group("labels")) if m.group("labels") else [m.group("bare")] if m.group("bare") else []
        heads = headings(doc) if wanted else []
        for label in wanted:
            if not heading_has_label(heads, label):
                problems.append(f"{at}: {doc.relative_to(ROOT)} has no heading '{label} ...' (see grep -n '^#' "
                                f"{doc.relative_to(ROOT)})")
    return problems


# ----------------------------------------------------------------------------------------------------- the files
def repository_files() -> list[Path]:
    """Tracked and new, not ignored files (``git ls-files``), or every file outside build/cache folders without git."""
    try:
        cmd = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in ROOT.rglob("*") if not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def text_files(suffixes: set[str]) -> Iterator[tuple[Path, str]]:
    for p in repository_files():
        if p.suffix in suffixes:
            try:
                yield p, p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


def help_texts() -> Iterator[tuple[str, str]]:
    """(``adasde SUB ... --help``, its text) for the root parser and every sub-command, recursively."""
    from adasde.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prog: str) -> Iterator[tuple[str, str]]:
        yield f"{prog} --help", parser.format_help()
        for action in parser._actions:  # noqa: SLF001 - argparse keeps sub-parsers only here
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{prog} {name}")

    yield from walk(build_parser(), "adasde")


# ----------------------------------------------------------------------------------------------------- the tests
def test_matcher_catches_bad_citations(tmp_path):
    """The matcher itself: good citations pass, each kind of bad one is reported with its line."""
    good = ('x (docs/ALGORITHMS.md section 3.5) y\n'
            'docs/HOSTS.md sections A1-A7 and B5; docs/HOSTS.md section C\n'
            'docs/ALGORITHMS.md 3.7, docs/TESTBEDS.md section 1.2, docs/ALGORITHMS.md\n    sections 3.1 and 4.1\n'
            'docs/ARCHITECTURE.md, "The model contract"; README.md; bench/results/<name>.md; solvers.md\n'
            'https://example.org/docs/MISSING.md and f"{name}.md"\n')
    assert check_text(good, None, "good") == []
    bad = {
        "ALGORITHMS.md section 3.5": "is not a file",  # the document without its folder
        "docs/ALGORITHMS.md section 42": "no heading '42",
        "docs/HOSTS.md sections A1-A99": "no heading 'A99",
        "docs/HOSTS.md section Z9": "'section' is not followed by a label",
        "docs/TESTBEDS.md section 7(a)": "'section' is not followed by a label",
        "docs/ALGORITHMS.md 9.9": "no heading '9.9",
        'docs/ARCHITECTURE.md, "No such heading"': "no heading containing",
        "docs/NOPE.md": "is not a file",
        "see ASSETS" + ".md section 5.1": "is not a file",
        "bench/results/NAME.md": "is not a file",
    }
    for text, expected in bad.items():
        problems = check_text("first line\n" + text + "\n", None, "synthetic")
        assert len(problems) == 1 and expected in problems[0] and "synthetic:2:" in problems[0], (text, problems)


@pytest.mark.parametrize("suffixes", [CODE_SUFFIXES], ids=["code-and-markdown"])
def test_document_citations_resolve(suffixes):
    problems: list[str] = []
    for path, text in text_files(suffixes):
        if path == Path(__file__).resolve():
            continue  # the synthetic bad citations above are meant to fail
        problems += check_text(text, path, str(path.relative_to(ROOT)))
    assert not problems, "unresolved document citations:\n" + "\n".join(problems)


def test_help_citations_resolve():
    problems: list[str] = []
    n = 0
    for where, text in help_texts():
        n += 1
        problems += check_text(text, None, where)
    assert n > 10, f"only {n} help texts found: the sub-command walk is broken"
    assert not problems, "unresolved document citations in --help:\n" + "\n".join(problems)


def test_distill_help_cites_the_algorithm_document():
    """The CLI points users at the in-repository document (the case that motivated this test)."""
    text = dict(help_texts())["adasde distill --help"]
    assert "docs/ALGORITHMS.md" in text and not check_text(text, None, "adasde distill --help")


# An absolute path under the work, home, root, tmp or Users folder of the machine that built a file; the pattern is
# assembled from pieces so that this file does not match itself.
MACHINE_PATH = re.compile(r"(?<![\w.~$}/-])/(?:" + "|".join(("wo" + "rk", "ho" + "me", "ro" + "ot", "t" + "mp",
                                                              "Us" + "ers")) + r")/")
PRIVATE_NOTES = re.compile("shared" + r"/docs|\.\./" + "shared" + r"\b")


def _safetensors_header(path: Path) -> str:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return f.read(n).decode("utf-8", errors="replace") if n < 100_000_000 else ""


def _lines_matching(pattern: re.Pattern[str]) -> list[str]:
    hits = []
    for path in repository_files():
        rel = path.relative_to(ROOT)
        if path.suffix == ".safetensors":
            text = _safetensors_header(path)
        elif path.suffix in TEXT_SUFFIXES or path.name in ("LICENSE", ".gitignore"):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
        else:
            continue
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            snippet = text[max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
            hits.append(f"{rel}:{line}: ...{snippet}...")
    return hits


def test_matchers_of_paths_and_private_notes():
    assert MACHINE_PATH.search("see " + "/wo" + "rk/main/x.py") and MACHINE_PATH.search('"/t' + 'mp/ckpt"')
    assert MACHINE_PATH.search("/ho" + "me/user/.cache")
    assert not MACHINE_PATH.search("https://example.org/t" + "mp/x ~/t" + "mp/x $TMPDIR/x .cache/work/x")
    assert PRIVATE_NOTES.search("/x/" + "shared/" + "docs/HOSTS.md") and PRIVATE_NOTES.search("../" + "shared/")
    assert not PRIVATE_NOTES.search("shared_docs sharedocs")


def test_no_build_machine_paths():
    hits = _lines_matching(MACHINE_PATH)
    assert not hits, ("absolute paths of a build machine in the repository (use a relative path, a temporary folder "
                      "created at run time, or record only the file name):\n" + "\n".join(hits))


def test_no_citations_of_private_notes():
    hits = _lines_matching(PRIVATE_NOTES)
    assert not hits, "cite the documents in docs/ instead:\n" + "\n".join(hits)


def test_documents_exist_and_are_listed():
    """The documents the code cites exist and ARCHITECTURE.md lists them."""
    arch = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name in ("ALGORITHMS.md", "HOSTS.md", "TESTBEDS.md", "EVALUATION.md"):
        assert (ROOT / "docs" / name).is_file(), name
        assert f"docs/{name}" in arch or f"({name})" in arch, f"docs/ARCHITECTURE.md does not list {name}"
