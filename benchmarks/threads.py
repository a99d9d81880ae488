"""Decode speed of a KV-cache program per runtime thread-pool size, on an idle machine and with one core kept
busy by another process: why `generate`/`validate` size the pool to the idle cores (`runtime.loading`).

    python benchmarks/threads.py FILE.pte [--tokens 16]

Each configuration runs in its own process (the pool is sized once per process); the busy core is a Python
loop in a child process, stopped after each measurement. Prints ms/token of prefill (8 tokens) and decode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

MEASURE = """
import json, sys, time
from pathlib import Path
from gemma3n_export_fixes.runtime.loading import load_program, set_threads
from gemma3n_export_fixes.runtime.decoding import runtime_decoder
threads = set_threads(int(sys.argv[2]))
decoder = runtime_decoder(load_program(Path(sys.argv[1])))
decoder.greedy(list(range(2, 10)), 2)  # warm-up
result = decoder.greedy(list(range(2, 10)), int(sys.argv[3]))
print(json.dumps({"threads": threads, "prefill_ms": result.prefill_ms, "decode_ms": result.decode_ms_per_token}))
"""


def _spin(stop: float) -> None:
    while time.time() < stop:
        pass


def measure(pte: str, threads: int, tokens: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, pte, str(threads), str(tokens)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pte")
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for busy in (False, True):
        for threads in range(1, cores + 1):
            spinner = None
            if busy:
                spinner = multiprocessing.Process(target=_spin, args=(time.time() + 600,))
                spinner.start()
            try:
                figures = measure(args.pte, threads, args.tokens)
            finally:
                if spinner is not None:
                    spinner.terminate()
                    spinner.join()
            rows.append({"busy_cores": int(busy), **figures})
            print(f"busy cores {int(busy)}, threads {threads}: prefill {figures['prefill_ms']:.1f} ms, decode "
                  f"{figures['decode_ms']:.2f} ms/token", flush=True)  # fmt: skip
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
