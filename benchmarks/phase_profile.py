"""Where a long export spends its time and memory: a py-spy dump and the RSS of a running process, every few
seconds, then the share of dumps per stage. Not a test (it watches a process for as long as it runs).

    python benchmarks/phase_profile.py watch PID DIR [--every 3]   # DIR/rss.txt, DIR/dumps/EPOCH-RSSKB.txt
    python benchmarks/phase_profile.py summary DIR                  # the share of dumps per stage, the peak's stack

Needs ``py-spy`` (``pip install py-spy``; reading another process may need ``sudo`` or ptrace rights). The README's
lowering split (2026-12-06, E2B 8da4w + 4w) and the memory peaks behind the export's memory shortcuts come from it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: Stage name, and a frame text that marks it; the first that a dump's main thread contains wins.
STAGES = (
    ("XNNPACK preprocess (all partitions)", "lower_all_submodules_to_backend"),
    ("partitioner (tagging, merge checks)", "XnnpackPartitioner.partition"),
    ("cutting out partitions", "_create_partitions"),
    ("duplicating shared constants", "_maybe_duplicate_constant_nodes"),
    ("ExportedProgram._validate", "_validate (torch/export/exported_program.py"),
    ("transform (rewrites + verifier)", "EdgeProgramManager.transform"),
    ("to_edge: run_decompositions", "run_decompositions"),
    ("to_edge: edge program generation and verification", "_gen_edge_manager_for_partitioners"),
    ("to_executorch", "to_executorch"),
    ("torch.export", "export_recipe"),
    ("quantize", "quantize (gemma3n_export_fixes/export/quant.py"),
    ("write", "export_pte"),
)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def watch(pid: int, out: Path, every: float) -> None:
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("phase_profile: py-spy is not installed (pip install py-spy)")
    (out / "dumps").mkdir(parents=True, exist_ok=True)
    with (out / "rss.txt").open("a") as log:
        while (rss := rss_kb(pid)) is not None:
            now = int(time.time())
            log.write(f"{now} {rss}\n")
            log.flush()
            dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True).stdout
            (out / "dumps" / f"{now}-{rss}.txt").write_text(dump)
            time.sleep(every)


def stage_of(dump: str) -> str:
    main = dump.split('"MainThread"', 1)[-1]
    return next((name for name, mark in STAGES if mark in main), "other")


def summary(out: Path) -> None:
    dumps = sorted((out / "dumps").glob("*.txt"))
    if not dumps:
        sys.exit(f"phase_profile: no dumps in {out / 'dumps'}")
    counts = collections.Counter(stage_of(path.read_text(errors="replace")) for path in dumps)
    print(f"{len(dumps)} dumps, {dumps[0].name.split('-')[0]} to {dumps[-1].name.split('-')[0]} (epoch seconds)")
    for name, n in counts.most_common():
        print(f"{n / len(dumps):6.1%}  {n:4d}  {name}")
    peak = max(dumps, key=lambda path: int(path.stem.split("-")[1]))
    print(f"\npeak RSS {int(peak.stem.split('-')[1]) / 1e6:.2f} GB in {peak.name}: {stage_of(peak.read_text())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("watch", help="dump PID every --every seconds into DIR until it exits")
    w.add_argument("pid", type=int)
    w.add_argument("dir", type=Path)
    w.add_argument("--every", type=float, default=3.0)
    s = commands.add_parser("summary", help="the share of dumps per stage, and the stage at the RSS peak")
    s.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.command == "watch":
        watch(args.pid, args.dir, args.every)
    else:
        summary(args.dir)


if __name__ == "__main__":
    main()
