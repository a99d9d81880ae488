"""Print a GitHub Actions job matrix with one entry per grid cell, from ``nox -l --json`` (the single source).

python matrix/fanout.py [--tag grid]   ->   {"include": [{"session": "matrix(<id>)", "id": "<id>"}, ...]}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cells(tag: str) -> list[dict[str, str]]:
    listed = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "--json", "-s", "matrix", "-f", str(ROOT / "noxfile.py")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    sessions = json.loads(listed)
    return [
        {"session": s["session"], "id": s["session"][len("matrix(") : -1]}
        for s in sessions
        if s["name"] == "matrix" and tag in (s.get("tags") or [])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="grid", help="grid tag to select (default: grid)")
    print(json.dumps({"include": cells(parser.parse_args().tag)}))


if __name__ == "__main__":
    main()
