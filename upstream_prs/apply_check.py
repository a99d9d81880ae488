"""Apply an upstream draft to a temporary copy of the installed transformers' Gemma 3n sources and
exercise the patched module in a fresh process with gemma3n-export-fixes turned off.

    python -m upstream_prs.apply_check PATCH_FILE    -> JSON on stdout

The patched ``modeling_gemma3n.py`` is imported under its real module name (so its relative imports
resolve to the installed transformers); then the unit the draft changes (named by the patch file,
``0001-gemma3n-<patch id>.patch``) is exported (non-strict and strict) and lowered with ``to_edge``, and compared
with the installed (upstream) class in float32, bfloat16 and float16: gaussian-topk, a sparse ``Gemma3nTextMLP``
(its graph must have no ``erfinv``); rotary-order, a ``Gemma3nTextModel`` (its graph must be the same when the
module's sets iterate in the other order, as under another hash seed).

``run_tester`` builds ``Gemma3nTextModel`` from the upstream ``Gemma3nTextModelTester``'s config, with or without
the ``activation_sparsity_pattern`` the draft's test snippet gives the tester, and lowers it with ``to_edge``: what
upstream's export tests see with and without the tester change.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

MODULE = "transformers.models.gemma3n.modeling_gemma3n"
REL = Path("src/transformers/models/gemma3n")

PROBE = r"""
import importlib.util, json, sys, warnings
from unittest import mock
warnings.simplefilter("ignore")
import torch
patched_file, patch_id = sys.argv[1], sys.argv[2]
import transformers.models.gemma3n.modeling_gemma3n as upstream
spec = importlib.util.spec_from_file_location("transformers.models.gemma3n.modeling_gemma3n_pr", patched_file)
patched = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = patched
spec.loader.exec_module(patched)
from transformers import Gemma3nTextConfig
config = Gemma3nTextConfig(vocab_size=64, vocab_size_per_layer_input=64, hidden_size=32, hidden_size_per_layer_input=8,
    intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
    laurel_rank=4, num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"],
    activation_sparsity_pattern=[0.95, 0.0] if patch_id == "gaussian-topk" else [0.0, 0.0])
out = {"hook_active": "gemma3n_export_fixes.plugin.engine" in sys.modules}


class SetInOtherOrder(set):  # what another hash seed can give: the reverse of this process's order
    def __iter__(self):
        return reversed(list(super().__iter__()))


if patch_id == "gaussian-topk":  # the unit the draft changes, its input, and what its graph must not have
    build = lambda module: module.Gemma3nTextMLP(config, layer_idx=0).eval()
    example = lambda dtype: (torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1)).to(dtype),)
    export_inputs, kwargs = (torch.randn(1, 4, 32),), {}

    def verdict(export):
        ep = export()
        return "erfinv" if any("erfinv" in str(n.target) for n in ep.graph.nodes) else "ok"
else:  # rotary-order: the text model, whose graph must not follow the order a set iterates in
    build = lambda module: module.Gemma3nTextModel(config).eval()
    example = lambda dtype: (torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(1)),)
    export_inputs = (torch.randint(3, 64, (1, 4), generator=torch.Generator().manual_seed(2)),)
    kwargs = {"use_cache": False}

    def verdict(export):
        graph = export().graph_module.code
        with mock.patch.object(patched, "set", SetInOtherOrder, create=True):
            other = export().graph_module.code
        return "ok" if graph == other else "depends on the set iteration order (the hash seed)"
torch.manual_seed(0)
new = build(patched)
old = build(upstream)
old.load_state_dict(new.state_dict())
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    x = example(dtype)
    with torch.no_grad():
        a, b = new.to(dtype)(*x, **kwargs), old.to(dtype)(*x, **kwargs)
    a, b = (getattr(r, "last_hidden_state", r) for r in (a, b))
    out[f"max_abs_diff_{str(dtype).split('.')[-1]}"] = (a.float() - b.float()).abs().max().item()
new = new.float()
for strict in (False, True):
    try:
        with torch.no_grad():
            out[f"export_strict_{strict}"] = verdict(
                lambda: torch.export.export(new, export_inputs, kwargs, strict=strict))
    except Exception as exc:
        out[f"export_strict_{strict}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
try:
    from executorch.exir import to_edge
    with torch.no_grad():
        to_edge(torch.export.export(new, export_inputs, kwargs, strict=False)).to_executorch()
    out["to_edge"] = "ok"
except Exception as exc:
    out["to_edge"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
print(json.dumps(out))
"""


def installed_sources() -> Path:
    import transformers.models.gemma3n as gemma3n

    return Path(gemma3n.__file__).parent


def apply_to_copy(patch_file: Path, workdir: Path) -> Path:
    """Copy the installed Gemma 3n sources to ``workdir/src/...``, apply the patch (``patch -p1``); return the dir."""
    target = workdir / REL
    target.mkdir(parents=True)
    for name in ("modular_gemma3n.py", "modeling_gemma3n.py"):
        shutil.copy(installed_sources() / name, target / name)
    dry = subprocess.run(["patch", "-p1", "--dry-run", "-f", "-i", str(patch_file)], cwd=workdir,
                         capture_output=True, text=True)  # fmt: skip
    if dry.returncode != 0 or "offset" in dry.stdout or "fuzz" in dry.stdout:
        raise RuntimeError(f"{patch_file.name} does not apply cleanly:\n{dry.stdout}{dry.stderr}")
    subprocess.run(["patch", "-p1", "-s", "-f", "-i", str(patch_file)], cwd=workdir, check=True)
    for name in ("modular_gemma3n.py", "modeling_gemma3n.py"):
        compile((target / name).read_text(), str(target / name), "exec")
    return target


SNIPPET_RUNNER = r"""
import importlib.util, sys, unittest, warnings
warnings.simplefilter("ignore")
import transformers.models.gemma3n  # the package, not yet the modelling module
spec = importlib.util.spec_from_file_location("transformers.models.gemma3n.modeling_gemma3n", sys.argv[1])
patched = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = patched
spec.loader.exec_module(patched)
spec = importlib.util.spec_from_file_location("snippet", sys.argv[2])
snippet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(snippet)
shared = [name for name in vars(snippet) if name.startswith("Gemma3n") and hasattr(patched, name)]
assert shared and all(getattr(snippet, name) is getattr(patched, name) for name in shared), shared
result = unittest.TextTestRunner(verbosity=2).run(unittest.defaultTestLoader.loadTestsFromModule(snippet))
sys.exit(0 if result.wasSuccessful() and result.testsRun else 1)
"""


#: The upstream ``Gemma3nTextModelTester``'s config arguments (tests/models/gemma3n/test_modeling_gemma3n.py; what
#: ``CausalLMModelTester.get_config`` passes), without ``activation_sparsity_pattern``, which the draft's tester
#: change sets.
TESTER_CONFIG = {
    "vocab_size": 99, "vocab_size_per_layer_input": 99, "hidden_size": 16, "hidden_size_per_layer_input": 16,
    "num_hidden_layers": 4, "num_kv_shared_layers": 2,
    "layer_types": ["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
    "num_attention_heads": 2, "num_key_value_heads": 2, "altup_num_inputs": 2, "intermediate_size": 21,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 512, "initializer_range": 0.02,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "head_dim": 8,
}  # fmt: skip

TESTER_PROBE = r"""
import importlib, importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
import torch
import transformers.models.gemma3n  # the package, not yet the modelling module
if sys.argv[1] != "upstream":
    spec = importlib.util.spec_from_file_location("transformers.models.gemma3n.modeling_gemma3n", sys.argv[1])
    patched = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = patched
    spec.loader.exec_module(patched)
modeling_gemma3n = importlib.import_module("transformers.models.gemma3n.modeling_gemma3n")
from transformers import Gemma3nTextConfig
config = Gemma3nTextConfig(**json.loads(sys.argv[2]))
out = {"hook_active": "gemma3n_export_fixes.plugin.engine" in sys.modules,
       "patched": modeling_gemma3n.__file__ == sys.argv[1],
       "sparse_layers": [i for i, s in enumerate(config.activation_sparsity_pattern) if s > 0]}
torch.manual_seed(0)
model = modeling_gemma3n.Gemma3nTextModel(config).eval()
inputs = {"input_ids": torch.randint(3, 99, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long),
          "use_cache": False}
try:
    from executorch.exir import to_edge
    with torch.no_grad():
        to_edge(torch.export.export(model, (), inputs, strict=False))
    out["to_edge"] = "ok"
except Exception as exc:
    out["to_edge"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
print(json.dumps(out))
"""


def tester_sparsity(snippet: Path) -> list[float]:
    """The ``activation_sparsity_pattern`` the snippet's instructions give ``Gemma3nTextModelTester``."""
    import ast
    import re

    (value,) = re.findall(r"^#\s+\+\s+activation_sparsity_pattern=(\[[^\]]*\])", snippet.read_text(), re.M)
    return ast.literal_eval(value)


def run_tester(patch_file: Path | None, activation_sparsity_pattern: list[float] | None) -> dict:
    """``Gemma3nTextModel`` built from the upstream tester's config (with ``activation_sparsity_pattern`` when given),
    exported non-strict and lowered with ``to_edge``, on the patched module (``None``: the upstream one), hook off."""
    config = dict(TESTER_CONFIG)
    if activation_sparsity_pattern is not None:
        config["activation_sparsity_pattern"] = activation_sparsity_pattern
    with tempfile.TemporaryDirectory() as tmp:
        target = "upstream"
        if patch_file is not None:
            target = str(apply_to_copy(patch_file.resolve(), Path(tmp)) / "modeling_gemma3n.py")
        env = {**os.environ, "GEMMA3N_EXPORT_FIXES": "0"}
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([sys.executable, "-c", TESTER_PROBE, target, json.dumps(config)],
                              capture_output=True, text=True, env=env, cwd=tmp)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the tester probe failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def load_draft(patch_file: Path) -> ModuleType:
    """The installed ``modeling_gemma3n`` with ``patch_file`` applied, imported as a module of its own."""
    import transformers.models.gemma3n.modeling_gemma3n as upstream

    with tempfile.TemporaryDirectory() as tmp:
        target = apply_to_copy(patch_file, Path(tmp))
        spec = importlib.util.spec_from_file_location(upstream.__name__ + "_draft", target / "modeling_gemma3n.py")
        draft = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = draft
        spec.loader.exec_module(draft)
    return draft


def run_snippet(patch_file: Path | None, snippet: Path) -> subprocess.CompletedProcess[str]:
    """Run the transformers-style test snippet against the patched module (``None``: the upstream one), hook off."""
    with tempfile.TemporaryDirectory() as tmp:
        target = apply_to_copy(patch_file, Path(tmp)) if patch_file else installed_sources()
        env = {**os.environ, "GEMMA3N_EXPORT_FIXES": "0"}
        env.pop("PYTHONPATH", None)
        return subprocess.run([sys.executable, "-c", SNIPPET_RUNNER, str(target / "modeling_gemma3n.py"), str(snippet)],
                              capture_output=True, text=True, env=env, cwd=tmp)  # fmt: skip


def check(patch_file: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        target = apply_to_copy(patch_file, Path(tmp))
        env = {**os.environ, "GEMMA3N_EXPORT_FIXES": "0"}
        env.pop("PYTHONPATH", None)
        patch_id = patch_file.name.removeprefix("0001-gemma3n-").removesuffix(".patch")
        proc = subprocess.run([sys.executable, "-c", PROBE, str(target / "modeling_gemma3n.py"), patch_id],
                              capture_output=True, text=True, env=env, cwd=tmp)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the patched module failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(check(Path(sys.argv[1]).resolve()), indent=2))
