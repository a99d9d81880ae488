"""Exports of ``check`` in a process of their own: ``python -m gemma3n_export_fixes.cli.check_job NAME[,NAME] DIR``.

``check`` runs its exports side by side (each is mostly single-threaded Python: tracing, ``to_edge``, XNNPACK's
passes), in processes like this one, each export of the process one after the other. The contract with the
parent, on stdout, which nothing else writes to: ``progress <line>`` lines as the stages go, and one
``result <json>`` line per export as it ends (the export's row of the check record). Whatever the libraries
print (Python or C++) goes to stderr, which is the parent's log (or its terminal under ``--verbose``). Exit 0
when every result was written, whatever they say.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    names, workdir = argv
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    sys.stdout.flush()
    os.dup2(2, 1)  # library output on fd 1 joins fd 2: the channel stays ours

    def say(line: str) -> None:
        channel.write(f"progress {line}\n")
        channel.flush()

    from gemma3n_export_fixes.cli.check import check_exports, export_and_validate

    for name in names.split(","):
        row = export_and_validate(name, check_exports()[name], Path(workdir), say)
        channel.write("result " + json.dumps(row) + "\n")
        channel.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
