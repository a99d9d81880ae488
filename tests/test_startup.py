"""What users get from ``pip install``: a wheel built from this checkout, installed into a fresh venv.

The .pth/.start activation must make the hook fire, import nothing heavy at start-up, print nothing and
never fail, whatever state transformers is in.
"""

from __future__ import annotations

import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import TESTS, run_python

pytestmark = pytest.mark.slow

REPO = TESTS.parent
TRIGGERS = "sum(type(f).__name__ == '_TransformersTrigger' for f in sys.meta_path)"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        text=True,
    )
    (built,) = out.glob("gemma3n_export_fixes-*.whl")
    return built


def _venv_with_wheel(root: Path, wheel: Path) -> str:
    venv.EnvBuilder(with_pip=True).create(root)
    python = str(root / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return python


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory, wheel) -> str:
    """A new venv with only the wheel installed (no transformers, no wrapt); its python."""
    return _venv_with_wheel(tmp_path_factory.mktemp("fresh-venv"), wheel)


@pytest.fixture(scope="module")
def with_stack(tmp_path_factory, wheel) -> str:
    """Another new venv with the wheel, plus a .pth that appends this interpreter's site-packages (torch,
    transformers, wrapt, packaging) after its own, so the wheel's copy of the package is the one imported."""
    python = _venv_with_wheel(tmp_path_factory.mktemp("stack-venv"), wheel)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "zz_outer_stack.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_wheel_ships_pth_and_start_at_the_root(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "gemma3n_export_fixes.pth" in names and "gemma3n_export_fixes.start" in names
    pth = zipfile.ZipFile(wheel).read("gemma3n_export_fixes.pth").decode()
    assert pth.startswith("import ") and pth.count("\n") == 1
    assert zipfile.ZipFile(wheel).read("gemma3n_export_fixes.start").decode().strip() == (
        "gemma3n_export_fixes._startup:install"
    )


def test_start_up_imports_nothing_heavy_and_arms_one_trigger(fresh_python):
    code = (
        "import sys; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'wrapt', 'torch', 'transformers', 'packaging', 'typing'}); "
        "ours = sorted(m for m in sys.modules if m.startswith('gemma3n_export_fixes')); "
        f"print(heavy, ','.join(ours), {TRIGGERS})"
    )
    result = run_python(["-c", code], python=fresh_python)
    assert (result.returncode, result.stderr) == (0, "")
    # exactly the stdlib trigger and the switches; .pth processed twice in a venv, armed once
    assert result.stdout.strip() == "[] gemma3n_export_fixes,gemma3n_export_fixes._env,gemma3n_export_fixes._startup 1"


def test_installed_wheel_activates_the_hook(with_stack):
    code = (
        "import transformers.models.gemma3n.modeling_gemma3n as m, gemma3n_export_fixes as gx, sys\n"
        "print(gx.__file__)\n"
        "print(getattr(m.Gemma3nTextMLP._gaussian_topk, '__gemma3n_export_fixes__', None))\n"
        f"print({TRIGGERS})\n"
    )
    result = run_python(["-c", code], python=with_stack)
    assert result.returncode == 0, result.stderr[-2000:]
    file, marker, triggers = result.stdout.split()
    assert file.startswith(str(Path(with_stack).parent.parent))
    assert marker == "gaussian-topk"
    assert triggers == "1"  # the trigger stays, inert (never mutate sys.meta_path mid-import)
    assert "gemma3n-export-fixes" not in result.stderr


def test_transformers_absent(fresh_python):
    code = "try:\n    import transformers\nexcept ImportError:\n    print('absent')\n"
    result = run_python(["-c", code], python=fresh_python)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "absent", "")


def test_transformers_broken_on_import(with_stack, tmp_path):
    broken = tmp_path / "transformers"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    code = "try:\n    import transformers\nexcept RuntimeError as e:\n    print(e)\n"
    result = run_python(["-c", code], python=with_stack, env={"PYTHONPATH": str(tmp_path)})
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "broken on purpose", "")


def test_opt_out_leaves_transformers_alone(with_stack):
    code = (
        "import sys, transformers.models.gemma3n.modeling_gemma3n as m\n"
        "print(getattr(m.Gemma3nTextMLP._gaussian_topk, '__gemma3n_export_fixes__', None),"
        f" 'gemma3n_export_fixes.plugin.hook' in sys.modules, {TRIGGERS})\n"
    )
    result = run_python(["-c", code], python=with_stack, env={"GEMMA3N_EXPORT_FIXES": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["None", "False", "0"]  # opted out: no trigger at all
    assert "gemma3n-export-fixes" not in result.stderr


def test_python_dash_s_skips_everything(fresh_python):
    result = run_python(
        ["-S", "-c", f"import sys; print({TRIGGERS}, 'gemma3n_export_fixes' in sys.modules)"], python=fresh_python
    )
    assert (result.returncode, result.stdout.split(), result.stderr) == (0, ["0", "False"], "")


def test_cli_without_transformers_says_so_in_one_line(fresh_python):
    result = run_python(["-m", "gemma3n_export_fixes.cli", "status"], python=fresh_python)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gemma3n-export-fixes: error: transformers is not installed: nothing to patch")
