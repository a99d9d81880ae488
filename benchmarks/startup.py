"""Start-up and patching cost, as ratios measured in one run (a benchmark, not a test).

    python benchmarks/startup.py [--runs N]

1. interpreter start (`python -c pass`) in a venv with only this package's wheel vs a bare venv;
2. what the start-up path imports (must be only gemma3n_export_fixes._startup);
3. the patch engine at Gemma 3n import: apply (fingerprint + install) and revert, in-process;
4. a fresh process importing transformers' Gemma 3n module, with the hook vs GEMMA3N_EXPORT_FIXES=0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _python_in_new_venv(root: Path, wheel: Path | None) -> str:
    venv.EnvBuilder(with_pip=True).create(root)  # both venvs get pip (and its .pth files): a fair baseline
    python = str(root / "bin" / "python")
    if wheel is not None:
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return python


def _start_ms(python: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _engine_ms(runs: int) -> tuple[float, float, float]:
    code = f"""
import os, time, statistics, warnings
warnings.simplefilter("ignore")
import transformers.models.gemma3n.modeling_gemma3n
import gemma3n_export_fixes as gx
t = time.perf_counter(); gx.apply(); cold = time.perf_counter() - t  # first call: imports wrapt, packaging
gx.revert()
a, r = [], []
for _ in range({runs}):
    t = time.perf_counter(); gx.apply(); a.append(time.perf_counter() - t)
    t = time.perf_counter(); gx.revert(); r.append(time.perf_counter() - t)
print(cold * 1000, statistics.median(a) * 1000, statistics.median(r) * 1000)
"""
    env = {**os.environ, "GEMMA3N_EXPORT_FIXES": "0"}  # so the import hook leaves the first apply() to us
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    out = out.stdout.split()
    return float(out[-3]), float(out[-2]), float(out[-1])


def _module_import_ms(runs: int) -> tuple[float, float]:
    code = (
        "import time; t = time.perf_counter(); import transformers.models.gemma3n.modeling_gemma3n; "
        "print((time.perf_counter() - t) * 1000)"
    )
    with_hook, without = [], []
    for i in range(2 * runs):  # alternate, so drift hits both alike
        off = i % 2 == 1
        env = {**os.environ, "GEMMA3N_EXPORT_FIXES": "0" if off else "1"}
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
        (without if off else with_hook).append(float(out.stdout.split()[-1]))
    return statistics.median(with_hook), statistics.median(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp, str(REPO)],
            check=True,
        )
        (wheel,) = tmp_path.glob("*.whl")
        bare = _python_in_new_venv(tmp_path / "bare", None)
        plugin = _python_in_new_venv(tmp_path / "plugin", wheel)
        _start_ms(bare, 3), _start_ms(plugin, 3)  # warm the file cache
        bare_ms, plugin_ms = _start_ms(bare, runs), _start_ms(plugin, runs)
        watch = ("gemma3n_export_fixes", "wrapt", "torch", "transformers", "typing", "packaging")
        probe = f"import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {watch!r}))"
        loaded = subprocess.run(
            [plugin, "-c", probe],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    cold_ms, apply_ms, revert_ms = _engine_ms(20)
    hooked_ms, plain_ms = _module_import_ms(max(3, runs // 6))
    print(f"python -c pass, bare venv:        {bare_ms:7.2f} ms (median of {runs})")
    print(f"python -c pass, plugin installed: {plugin_ms:7.2f} ms  ratio {plugin_ms / bare_ms:.3f}")
    print(f"modules the start-up path loaded: {loaded}")
    print(f"first apply() at Gemma 3n import (imports wrapt + packaging, fingerprints, installs): {cold_ms:.1f} ms")
    print(f"later apply(): {apply_ms:.2f} ms; revert(): {revert_ms:.3f} ms (medians of 20)")
    print(
        f"import of transformers' Gemma 3n module in a fresh process: {hooked_ms:.0f} ms with the hook, "
        f"{plain_ms:.0f} ms without (ratio {hooked_ms / plain_ms:.3f})"
    )


if __name__ == "__main__":
    main()
