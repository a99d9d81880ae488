"""Model sources an export can start from: the built-in ``tiny``, the real ``e2b-shape``/``e4b-shape``
configs with random weights, or a local checkpoint directory (``from_pretrained``).

Nothing here downloads anything. A checkpoint directory may hold a text-only ``gemma3n_text`` model or
the full multimodal ``gemma3n`` one; only the text decoder (``language_model`` + ``lm_head``) is loaded.
A loaded model records its source as an absolute path, so records work from any directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.errors import UserError, first_line

if TYPE_CHECKING:
    import torch

BUILTIN = ("tiny", "e2b-shape", "e4b-shape")
DTYPES = ("float32", "bfloat16")


def torch_dtype(name: str) -> torch.dtype:
    """``float32`` / ``bfloat16`` -> the torch dtype."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def source_spec(spec: str) -> str:
    """How a model source is recorded: a built-in name as is, a checkpoint directory as an absolute path."""
    return spec if spec in BUILTIN else str(Path(spec).expanduser().resolve())


def _real_layer_types(layers: int) -> list[str]:
    """The real models' pattern: four sliding layers, then one full layer."""
    return ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(layers)]


def _real_shape(layers: int, intermediate: int, shared: int) -> dict[str, Any]:
    """Text config values of google/gemma-3n-E2B / E4B (public model configs)."""
    return {
        "vocab_size": 262_400,
        "vocab_size_per_layer_input": 262_144,
        "hidden_size": 2048,
        "hidden_size_per_layer_input": 256,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "layer_types": _real_layer_types(layers),
        "sliding_window": 512,
        "num_kv_shared_layers": shared,
        "activation_sparsity_pattern": [0.95] * 10 + [0.0] * (layers - 10),
        "altup_num_inputs": 4,
        "laurel_rank": 64,
        "max_position_embeddings": 32_768,
    }


SHAPES: dict[str, dict[str, Any]] = {
    "e2b-shape": _real_shape(layers=30, intermediate=8192, shared=10),
    "e4b-shape": _real_shape(layers=35, intermediate=16_384, shared=15),
}


@dataclass
class LoadedModel:
    """A Gemma 3n text decoder ready to export, and how to rebuild it (``source``)."""

    model: torch.nn.Module
    source: str
    config: dict[str, Any]

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def parameters(self) -> int:
        """Parameters of the model as built (float): count before quantizing, which turns some into buffers."""
        return sum(p.numel() for p in self.model.parameters())


def _text_config_dict(model: torch.nn.Module) -> dict[str, Any]:
    keep = (
        "vocab_size", "vocab_size_per_layer_input", "hidden_size", "hidden_size_per_layer_input",
        "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "layer_types", "sliding_window", "num_kv_shared_layers", "activation_sparsity_pattern",
        "altup_num_inputs", "laurel_rank", "altup_coef_clip", "final_logit_softcapping",
    )  # fmt: skip
    config = model.config
    values = {key: getattr(config, key, None) for key in keep}
    values["bos_token_id"], values["eos_token_ids"] = special_token_ids(model)
    return values


def special_token_ids(model: torch.nn.Module) -> tuple[int | None, list[int]]:
    """(BOS id, end-of-sequence ids): the generation config's (a Gemma 3n checkpoint stops at ``<eos>`` and at
    ``<end_of_turn>``, ids 1 and 106), else the model config's."""
    sources = [getattr(model, "generation_config", None), model.config]
    bos = next((s.bos_token_id for s in sources if getattr(s, "bos_token_id", None) is not None), None)
    eos = next((s.eos_token_id for s in sources if getattr(s, "eos_token_id", None) is not None), None)
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return bos, [int(i) for i in dict.fromkeys(eos_ids)]


def checkpoint_model_type(directory: Path) -> str:
    """The ``model_type`` of a checkpoint directory; ``UserError`` unless it is a Gemma 3n checkpoint."""
    config_file = directory / "config.json"
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory (expected tiny, e2b-shape, e4b-shape or a checkpoint dir)")
    if not config_file.is_file():
        raise UserError(f"{directory}: not a Hugging Face checkpoint (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise UserError(f"{config_file}: unreadable ({exc})") from None
    if model_type not in ("gemma3n", "gemma3n_text"):
        raise UserError(f"{directory}: model_type {model_type!r} is not Gemma 3n (gemma3n or gemma3n_text)")
    return model_type


#: Weights of a multimodal ``gemma3n`` checkpoint that the text decoder does not load (on purpose).
TOWER_PREFIXES = ("vision_tower", "audio_tower", "embed_vision", "embed_audio")


#: Names older releases wrote for a weight, and the name it has now. transformers 4.57.6 (and 5.0.0rc1, as
#: reported) save ``Gemma3nForCausalLM``'s per-layer projection as
#: ``model.language_model.per_layer_model.language_model_projection.weight`` (their key conversion rewrites the
#: ``model`` inside ``per_layer_model_projection``); later releases read that file with the weight missing and
#: initialise it at random. ``tests/test_commands.py`` reproduces both halves.
RENAMED_WEIGHTS = {"per_layer_model.language_model_projection": "per_layer_model_projection"}


def repair_renamed(model: torch.nn.Module, directory: Path, info: dict[str, Any]) -> list[str]:
    """Load each weight that ``info`` reports missing while the file holds it under an older release's name
    (:data:`RENAMED_WEIGHTS`); drop both from ``info``. Returns the repaired parameter names."""
    import torch
    from safetensors import safe_open

    repaired = []
    params = dict(model.named_parameters())
    for missing in list(info.get("missing_keys", [])):
        for old, new in RENAMED_WEIGHTS.items():
            if new not in missing or missing not in params:
                continue
            suffix = missing.split(new, 1)[1]  # ".weight"
            wanted = f"{old}{suffix}"
            for file in sorted(directory.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as handle:
                    key = next((k for k in handle.keys() if k.endswith(wanted)), None)  # noqa: SIM118
                    if key is None:
                        continue
                    with torch.no_grad():
                        params[missing].copy_(handle.get_tensor(key).to(params[missing].dtype))
                info["missing_keys"] = [k for k in info["missing_keys"] if k != missing]
                info["unexpected_keys"] = [k for k in info.get("unexpected_keys", []) if not k.endswith(wanted)]
                repaired.append(missing)
                break
    return repaired


def refuse_incomplete(directory: Path, info: dict[str, Any]) -> None:
    """``UserError`` when loading left weights randomly initialised (missing or mismatched) or skipped weights
    that are not the vision/audio towers: an export of such a model computes a function nobody trained."""
    unexpected = [k for k in info.get("unexpected_keys", []) if not any(p in k for p in TOWER_PREFIXES)]
    problems = {
        "missing (would be random)": list(info.get("missing_keys", [])),
        "of another shape (would be random)": [
            str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", [])
        ],
        "unexpected (ignored)": unexpected,
    }
    found = [f"{len(keys)} weights {what}: {', '.join(sorted(keys)[:3])}" + (", ..." if len(keys) > 3 else "")
             for what, keys in problems.items() if keys]  # fmt: skip
    if found:
        raise UserError(f"{directory}: the checkpoint does not match this transformers' Gemma 3n: {'; '.join(found)}")


def load_model(spec: str, dtype: torch.dtype | None = None, seed: int = 0, lazy: bool = False) -> LoadedModel:
    """Load ``spec`` (``tiny``, ``e2b-shape``, ``e4b-shape`` or a checkpoint directory) in eval mode.

    Without ``dtype`` each source comes in its natural dtype, the one that costs least memory: ``tiny`` in
    float32, the real shapes built and initialised in bfloat16 (never float32), a checkpoint in the dtype it
    was saved in. The export casts (and quantizes) unit by unit from there (``export.quant.quantize``).

    ``lazy`` (the real shapes; ignored for the others): the large weights stay on the meta device until
    ``export.quant.quantize`` reaches their unit (``models.lazy``), so the whole model is never resident. The
    values are the same as without ``lazy`` (``models.lazy.materialize`` fills them all at once then).
    """
    import torch

    from gemma3n_export_fixes.models.tiny import build_tiny_model

    if spec == "tiny":
        model = build_tiny_model(seed=seed, dtype=dtype)
    elif spec in SHAPES:
        from gemma3n_export_fixes.models.lazy import materialize

        model = build_tiny_model(seed=seed, init_dtype=torch.bfloat16, lazy=True, **SHAPES[spec])
        if not lazy or dtype is not None:
            materialize(model)
            model = model if dtype is None else model.to(dtype)
    else:
        directory = Path(spec)
        checkpoint_model_type(directory)
        import transformers
        from transformers import Gemma3nForCausalLM

        dtype_kwarg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            model, info = Gemma3nForCausalLM.from_pretrained(
                directory, output_loading_info=True, **{dtype_kwarg: dtype or "auto"}
            )
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # corrupt safetensors, bad config values, ...: all the user's checkpoint
            raise UserError(f"{directory}: cannot load the checkpoint ({first_line(exc)})") from None
        info = {k: list(v) for k, v in info.items() if isinstance(v, (list, set, tuple))}
        repair_renamed(model, directory, info)
        refuse_incomplete(directory, info)
        model = model.eval()
    return LoadedModel(model=model, source=source_spec(spec), config=_text_config_dict(model))
