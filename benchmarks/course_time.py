"""How long the course takes to run: executes each notebook top to bottom and prints its wall time.

    .venv/bin/python benchmarks/course_time.py [notebooks/01_*.ipynb ...]

Notebooks run in their own folder, as Jupyter and nbval run them; nothing is written back. The peer in the same
run is a one-cell notebook that only imports tinyvit (kernel start + `import torch`): the floor every notebook
pays, so "x floor" says how much of a notebook's time is its own work.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent


def run_notebook(nb: nbformat.NotebookNode, folder: Path, timeout: int) -> float:
    """Execute a notebook in `folder` with the current Python's kernel; return the wall time in seconds."""
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in order")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise FileNotFoundError(f"no notebook at {missing}" if missing else f"no notebooks in {ROOT / 'notebooks'}")

    floor_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import tinyvit")])
    floor = run_notebook(floor_nb, ROOT / "notebooks", args.timeout)
    print(f"{'notebook':<40} {'seconds':>8} {'x floor':>8}")
    print(f"{'(floor: kernel start + import tinyvit)':<40} {floor:8.1f} {1.0:8.1f}")
    total, failed = 0.0, []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        try:
            seconds = run_notebook(nb, path.resolve().parent, args.timeout)
        except CellExecutionError as err:
            failed.append(path.name)
            print(f"{path.name:<40} {'FAILED':>8}  {str(err).splitlines()[-1] if str(err) else ''}")
            continue
        total += seconds
        print(f"{path.name:<40} {seconds:8.1f} {seconds / floor:8.1f}")
    print(f"{'total (' + str(len(paths) - len(failed)) + ' notebooks)':<40} {total:8.1f} {total / floor:8.1f}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
