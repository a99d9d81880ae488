"""Run every patch's reproducer in this (fresh) process and print the results as JSON.

    python -m gemma3n_export_fixes.plugin.reproduce upstream   # with GEMMA3N_EXPORT_FIXES=0: never patched
    python -m gemma3n_export_fixes.plugin.reproduce patched

``check`` runs the two modes in separate processes, so the unpatched state cannot leak into the
patched run (and the reverse).
"""

from __future__ import annotations

import json
import sys
import time
import warnings


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if mode not in ("upstream", "patched"):
        print("usage: python -m gemma3n_export_fixes.plugin.reproduce upstream|patched", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    from gemma3n_export_fixes.plugin.api import ENGINE

    if mode == "patched":
        ENGINE.apply(automatic=True)  # what an export script gets (GEMMA3N_EXPORT_FIXES_DISABLE honoured)
    elif ENGINE.applied_ids():
        print("upstream mode needs GEMMA3N_EXPORT_FIXES=0 (a patch is applied)", file=sys.stderr)
        return 2
    results = []
    for patch in (p for p in ENGINE.registry if p.reproduce is not None):
        start = time.perf_counter()
        with ENGINE.patched(patch.reproduce_with):  # what the reproducer needs fixed so that only its bug shows
            outcome = patch.reproduce()
        results.append(
            {
                "id": patch.id,
                "bug": outcome.bug,
                "detail": outcome.detail,
                "error": outcome.error,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
