"""The repository's docs and docstrings point only inside it, and at sections that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"
FOLDERS = ("segllm", "data_builders", "train", "eval", "tests", "bench", "configs", "docs")
SUFFIXES = {".py", ".md", ".yaml", ".json", ".toml"}
# notes that lived beside the repository once; written in pieces so this file does not match
OUTSIDE = re.compile("|".join([r"DESIGN" + r"\.md", r"\.\./" + "shared", r"/work" + "/"]))
SECTION_REFERENCE = re.compile(r"docs/architecture\.md\W{0,4}[\"']([^\"']+)[\"']")


def repository_texts() -> dict[Path, str]:
    files = [*REPO.glob("*.md"), REPO / "Makefile", REPO / "pyproject.toml"]
    for folder in FOLDERS:
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return {p: p.read_text(encoding="utf-8") for p in files if "fixtures" not in p.parts}


def test_nothing_refers_to_files_outside_the_repository():
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p, text in repository_texts().items()
             for m in OUTSIDE.finditer(text)]
    assert found == []


def test_named_architecture_sections_exist():
    sections = set(re.findall(r"^## (.+)$", ARCHITECTURE.read_text(encoding="utf-8"), flags=re.M))
    named = {}
    for path, text in repository_texts().items():
        for name in SECTION_REFERENCE.findall(" ".join(text.split())):  # names may wrap lines
            named.setdefault(name, path.relative_to(REPO))
    assert named, "no docstring names a section of docs/architecture.md"
    assert {name: where for name, where in named.items() if name not in sections} == {}
