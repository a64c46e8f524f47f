"""`python -m tinyvit train | eval | embed | think | ask`: the command line, which lives in tinyvit/cli.py."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
