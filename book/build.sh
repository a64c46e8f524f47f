#!/usr/bin/env bash
# Build the course book into book/_build/html from the notebooks' committed outputs: no kernel runs and
# nothing is downloaded, so it works offline. Every page is rebuilt, and any Sphinx warning (a toc entry
# that points nowhere, a broken reference, a script or font loaded from outside the book) fails the build.
#
#   book/build.sh            build
#   book/build.sh --serve    build, then serve it at http://127.0.0.1:8000 and open a browser (Ctrl-C stops)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -gt 1 || ( $# -eq 1 && "$1" != "--serve" ) ]]; then
    echo "usage: book/build.sh [--serve]  (got: $*)" >&2
    exit 2
fi
if ! command -v jupyter-book >/dev/null; then
    echo "jupyter-book not found: activate the virtual environment made by 'pip install -r requirements.txt'" >&2
    exit 1
fi
jupyter-book build book/ --all -W -n --keep-going
if [[ "${1:-}" == "--serve" ]]; then
    # Served over http rather than opened as file://, which browsers restrict for fonts and scripts.
    (sleep 1 && python -m webbrowser -t "http://127.0.0.1:8000/" >/dev/null 2>&1 || true) &
    python -m http.server 8000 --bind 127.0.0.1 --directory book/_build/html
fi
