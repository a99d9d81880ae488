"""Wall time of the whole matrix: every grid row's cell, N at a time, each its own `nox -s "matrix(<id>)"`.

    python benchmarks/grid_wall.py [--jobs 2] [--force] [--heavy ID] [--next] [--json FILE] [-- NOX_POSARGS]

Cold grid: the lowered-program cache (`.nox/lowered-cache`) holds nothing for the checkout's `export` sources
(a change there changes every key). Warm grid: run it again with `--force` (every cell re-runs and finds the
programs the first run lowered). The cells share that cache (writes are atomic); results go to
`matrix/results/` as with `nox -s matrix`. Prints one line per cell (id, seconds, exit code) and the wall
time; `--json` keeps them. `--heavy ID` adds a row tagged heavy (`--heavy seed-tf5.0.0rc1-et1.0.1`: the
seed's torch 2.9.1 stack, a multi-GB download), `--next` the row that installs the newest transformers at
run time. Order: the heavy rows first (the longest installs), then the grid rows from both ends of the file
inwards (neighbouring releases, which most often trace the same graph, do not start side by side), then
next. A benchmark: nothing asserts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matrix.grid import is_current, load_rows  # noqa: E402


def _memory_gib() -> int:
    with open("/proc/meminfo") as meminfo:
        return round(int(meminfo.readline().split()[1]) / 2**20)


def _ends_inwards(ids: list[str]) -> list[str]:
    front, back = ids[: (len(ids) + 1) // 2], ids[(len(ids) + 1) // 2 :][::-1]
    return [i for pair in zip(front, [*back, ""], strict=False) for i in pair if i]


def cells(heavy: list[str], latest: bool, force: bool = False) -> list[tuple[str, list[str]]]:
    """(row id, the flags its nox session needs), in the order they start; ``heavy``: heavy rows to add;
    a row whose stored result is current only with ``force`` (so the figures are those of cells that ran)."""
    rows = [row for row in load_rows() if force or not is_current(row)]
    grid = [row["id"] for row in rows if "grid" in row["tags"]]
    first = [(row["id"], ["--heavy"]) for row in rows if "heavy" in row["tags"] and row["id"] in heavy]
    last = [(row["id"], ["--next"]) for row in rows if latest and "next" in row["tags"]]
    return first + [(i, []) for i in _ends_inwards(grid)] + last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cells at once (default: 2)")
    parser.add_argument("--force", action="store_true", help="re-run cells whose stored result is current")
    parser.add_argument("--heavy", action="append", default=[], metavar="ID",
                        help="add this row tagged heavy (another torch: a multi-GB download); repeatable")  # fmt: skip
    parser.add_argument("--next", action="store_true", help="add the row tagged next (newest transformers)")
    parser.add_argument("--json", type=Path, help="write the per-cell seconds and the wall time here")
    parser.add_argument("posargs", nargs="*", help="passed on to each nox session (after --)")
    args = parser.parse_args()
    todo: queue.Queue[tuple[str, list[str]]] = queue.Queue()
    for cell in cells(args.heavy, args.next, args.force):
        todo.put(cell)
    extra = (["--force"] if args.force else []) + args.posargs
    done: dict[str, dict[str, float | int]] = {}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                row_id, flags = todo.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            command = [sys.executable, "-m", "nox", "-s", f"matrix({row_id})", "--", *flags, *extra]
            code = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            with lock:
                done[row_id] = {"seconds": round(time.perf_counter() - start, 1), "exit_code": code}
                print(f"{row_id}: {done[row_id]['seconds']} s, exit code {code}", flush=True)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = round(time.perf_counter() - started, 1)
    print(f"grid wall: {wall} s for {len(done)} cells, {args.jobs} at a time", flush=True)
    median = statistics.median(cell["seconds"] for cell in done.values()) if done else 0.0
    print(f"median cell: {median} s", flush=True)
    if args.json:
        command = "python benchmarks/grid_wall.py " + " ".join(sys.argv[1:])
        record = {
            "title": f"The whole matrix, {args.jobs} cells at a time ({'forced' if args.force else 'stale cells'})",
            "command": command.replace(str(args.json), "benchmarks/results/grid_wall.json"),
            "machine": f"{os.cpu_count()} cores, {_memory_gib()} GiB, no GPU",
            "date": dt.date.today().isoformat(),
            "stack": "every grid row" + (" and the rows asked for" if args.heavy or args.next else ""),
            "jobs": args.jobs,
            "wall": wall,
            "cells_run": len(done),
            "median_cell": round(median, 1),
            "cells": done,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(cell["exit_code"] == 0 for cell in done.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
