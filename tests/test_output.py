"""What a person sees: the commands' own lines; library noise in the log (or with --verbose); errors never hidden."""

from __future__ import annotations

from conftest import run_python

NOISE = """
import os, sys, warnings, logging
from pathlib import Path
from gemma3n_export_fixes.cli.console import console
log = Path(sys.argv[1])
with console(verbose=sys.argv[2] == "1", log=log) as con:
    os.write(2, b"[cpuinfo_utils.cpp:71] Reading file /sys/devices/soc0/image_version\\n")  # C++ straight to fd 2
    os.write(1, b"Failed to load _C_mxfp8.so\\n")  # a library print to fd 1
    print("a library's print()")
    warnings.warn("Mutation on a buffer", UserWarning)
    logging.getLogger("torch").warning("register_constant() is deprecated")
    con.print("result line")
    con.progress("progress line")
print("after the command")
"""


def test_third_party_output_goes_to_the_log_and_the_commands_lines_stay(tmp_path):
    log = tmp_path / "run.log"
    result = run_python(["-c", NOISE, str(log), "0"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["result line", "after the command"]
    assert result.stderr.splitlines() == ["progress line"]
    logged = log.read_text()
    for noise in ("cpuinfo_utils.cpp", "_C_mxfp8", "library's print", "Mutation on a buffer", "register_constant"):
        assert noise in logged


def test_verbose_shows_everything(tmp_path):
    log = tmp_path / "run.log"
    result = run_python(["-c", NOISE, str(log), "1"])
    assert result.returncode == 0, result.stderr
    assert "cpuinfo_utils.cpp" in result.stderr and "Mutation on a buffer" in result.stderr
    assert "Failed to load" in result.stdout and "result line" in result.stdout
    assert not log.exists()


def test_an_unexpected_error_shows_its_traceback_and_names_the_log(tmp_path):
    code = (
        "import sys\n"
        "import gemma3n_export_fixes.cli.main as m\n"
        "def boom(args, con): raise RuntimeError('a bug somewhere')\n"
        "m._cmd_sizes = boom\n"
        f"sys.exit(m.main(['sizes', '--log', {str(tmp_path / 'x.log')!r}]))\n"
    )
    result = run_python(["-c", code])
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug somewhere" in result.stderr
    assert f"third-party output of this run: {tmp_path / 'x.log'}" in result.stderr


def test_version_flag():
    from gemma3n_export_fixes.versions import package_version

    result = run_python(["-m", "gemma3n_export_fixes.cli", "--version"])
    assert result.returncode == 0 and result.stdout.strip() == f"gemma3n-export-fixes {package_version()}"
    assert package_version() != "unknown"  # the tests run against the installed package


def test_a_real_command_prints_only_its_own_lines(tmp_path):
    """`sizes` imports torch and transformers (and their warnings): stdout is the table, stderr is empty."""
    result = run_python(["-m", "gemma3n_export_fixes.cli", "sizes", "--model", "tiny", "--log", str(tmp_path / "l")])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    from gemma3n_export_fixes.export.sizes import weight_bytes

    lines = result.stdout.splitlines()
    parameters = weight_bytes("tiny", "float32", "none", "none")["parameters"]  # differs by release
    assert lines[0].startswith(f"tiny: {parameters:,} parameters") and len(lines) == 2 + 7
