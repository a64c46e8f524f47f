"""The product speaks of the project, not of how it was made: no numbered work-log references ("Session 7",
"issue 4") and no claims about an unnamed computer ("this machine", "this 2-core CPU") in the package, the tests,
CI, the notebooks (every cell and output), the README, the book or the benchmark scripts. A measurement names its
CPU model and date, in benchmarks/README.md, which may name CPUs but not work-log entries either."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK_LOG = re.compile(r"\b(?:session|issue)s?\s+#?\d+", re.IGNORECASE)
MACHINE = re.compile(r"\bthis\s+(?:machine|(?:2|two)-core\s+cpu|amd\s+epyc|cpu)\b", re.IGNORECASE)
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}


def product_files() -> list[tuple[Path, tuple[re.Pattern, ...]]]:
    """Each product file with the patterns it must not contain."""
    both = (WORK_LOG, MACHINE)
    files = [p for top in ("tinyvit", "tests", ".ci") for p in sorted((ROOT / top).rglob("*"))
             if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    files += sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
    files += [ROOT / "README.md", ROOT / "book" / "_config.yml"] + sorted((ROOT / "benchmarks").glob("*.py"))
    found = [(p, both) for p in files if p.resolve() != Path(__file__).resolve()]
    return found + [(ROOT / "benchmarks" / "README.md", (WORK_LOG,))]


def text_parts(path: Path) -> list[tuple[str, str]]:
    """(where, text) pieces of a file: the whole text, or for a notebook each cell's source and text outputs."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # checkpoints, tokenizer models and other binary files
        return []
    if path.suffix != ".ipynb":
        return [("", text)]
    parts = []
    for i, cell in enumerate(json.loads(text)["cells"]):
        parts.append((f"cell {i} ({cell['cell_type']})", "".join(cell["source"])))
        for output in cell.get("outputs", []):
            pieces = [output.get("text", ""), output.get("evalue", ""), "\n".join(output.get("traceback", []))]
            pieces += [v for k, v in output.get("data", {}).items() if not k.startswith("image/")]
            for piece in pieces:
                joined = piece if isinstance(piece, str) else "".join(map(str, piece))
                parts.append((f"cell {i} output", joined))
    return parts


def banned_words(path: Path, patterns: tuple[re.Pattern, ...]) -> list[str]:
    """'file:line: match' (for a notebook, 'file: cell N, line K: match') for each banned phrase in `path`."""
    name = path.relative_to(ROOT).as_posix()
    hits = []
    for where, text in text_parts(path):
        for pattern in patterns:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                place = f"{name}: {where}, line {line}" if where else f"{name}:{line}"
                hits.append(f"{place}: {' '.join(m.group(0).split())!r}")
    return hits


def test_the_patterns_catch_the_banned_words():
    text = ("Session 7 and sessions 5, 6\nissue 4's target, Issue #2\nmeasured on this machine, on this 2-core\n"
            "CPU, this two-core CPU, this AMD EPYC, this CPU's rate\n")
    found = [m.group(0) for p in (WORK_LOG, MACHINE) for m in p.finditer(text)]
    assert [" ".join(f.split()) for f in found] == [
        "Session 7", "sessions 5", "issue 4", "Issue #2",
        "this machine", "this 2-core CPU", "this two-core CPU", "this AMD EPYC", "this CPU"]
    allowed = "an AMD EPYC with AVX-512 (2026-11-27); this issue's code; tinyvit/cpu_speed.py; this cpu_speed module"
    assert not any(p.search(allowed) for p in (WORK_LOG, MACHINE))


def test_product_files_have_no_work_log_or_machine_words():
    files = product_files()
    assert len(files) > 20 and all(p.exists() for p, _ in files)
    hits = [hit for path, patterns in files for hit in banned_words(path, patterns)]
    assert not hits, ("numbered work-log references or claims about an unnamed computer (say what is meant; give a "
                      "measurement with its CPU model and date in benchmarks/README.md):\n" + "\n".join(hits))
