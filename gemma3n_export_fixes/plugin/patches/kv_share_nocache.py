"""kv-share-nocache: KV-shared layers reuse their source layer's K/V without a cache too (4.53.0 - 5.5.x).

Defect: the last ``num_kv_shared_layers`` attention layers take their keys and values from an earlier layer
only through the cache object. With ``use_cache=False`` (what the seed export script and most export
wrappers run) there is no cache, so those layers compute K/V with their own, untrained ``k_proj``/``v_proj``:
``use_cache=False`` logits differ from ``use_cache=True`` logits and an exported ``.pte`` computes the wrong
function. transformers 5.6.0 fixed it (PR #45489) by passing the shared K/V explicitly.

Fix: ``Gemma3nTextModel.forward`` gains a per-call scratch object (passed down through the ``**kwargs``
every release forwards to the decoder layers and their attention). When an attention layer is called
without a cache, it hands upstream's own cached code path that scratch object as its cache: ``update``
returns the new K/V unchanged (nothing is cached) and records them under the layer index, in each of the
three layouts the releases read them back from (``key_cache``/``value_cache``, ``layers[i].keys``,
``shared_layers``). The shared layers therefore read exactly the K/V their source layer computed in the
same call, which is what a cache gives and what 5.6.0 does. With a cache, both functions run upstream's
code untouched. This changes eager numbers on purpose: it makes ``use_cache=False`` right.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from gemma3n_export_fixes.plugin.patch import Function, Patch, Reproduction, Target

MODEL_FORWARD = "Gemma3nTextModel.forward"
DECODER_FORWARD = "Gemma3nTextDecoderLayer.forward"
ATTENTION_FORWARD = "Gemma3nTextAttention.forward"

#: The keyword that carries the scratch object from the model down to the attention layers.
SCRATCH_KWARG = "_gemma3n_export_fixes_uncached_kv"

_CACHE_PARAMETERS = ("past_key_values", "past_key_value")


class _LayerKV:
    """What ``cache.layers[i]`` looked like to 4.54/4.55 attention: ``.keys`` and ``.values``."""

    def __init__(self, keys: Any, values: Any) -> None:
        self.keys = keys
        self.values = values


class UncachedKVShare:
    """A stand-in cache for one uncached forward: records K/V per layer, caches nothing.

    Holds the K/V of every layer of one call until the call ends (the same tensors a cache would hold).
    """

    def __init__(self) -> None:
        self.key_cache: dict[int, Any] = {}
        self.value_cache: dict[int, Any] = {}
        self.layers: dict[int, _LayerKV] = {}
        self.shared_layers: dict[int, tuple[Any, Any]] = {}

    def update(self, key_states: Any, value_states: Any, layer_idx: int, cache_kwargs: Any = None) -> tuple[Any, Any]:
        self.key_cache[layer_idx] = key_states
        self.value_cache[layer_idx] = value_states
        self.layers[layer_idx] = _LayerKV(key_states, value_states)
        return key_states, value_states


def _cache_parameter(func: Function) -> tuple[str, int]:
    """Name and positional index (counting ``self``) of the cache parameter of an attention forward."""
    names = list(inspect.signature(func).parameters)
    for name in _CACHE_PARAMETERS:
        if name in names:
            return name, names.index(name)
    raise TypeError(f"{func.__qualname__} has no cache parameter ({' / '.join(_CACHE_PARAMETERS)})")


def build(originals: Mapping[str, Function]) -> dict[str, Function]:
    import functools

    upstream_model_forward = originals[MODEL_FORWARD]
    upstream_attention_forward = originals[ATTENTION_FORWARD]
    cache_name, cache_index = _cache_parameter(upstream_attention_forward)

    @functools.wraps(upstream_model_forward)
    def model_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs[SCRATCH_KWARG] = UncachedKVShare()
        return upstream_model_forward(self, *args, **kwargs)

    @functools.wraps(upstream_attention_forward)
    def attention_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        scratch = kwargs.pop(SCRATCH_KWARG, None)
        if scratch is not None:
            if len(args) >= cache_index:  # the cache was passed positionally (index counts `self`)
                if args[cache_index - 1] is None:
                    args = (*args[: cache_index - 1], scratch, *args[cache_index:])
            elif kwargs.get(cache_name) is None:
                kwargs[cache_name] = scratch
        return upstream_attention_forward(self, *args, **kwargs)

    return {MODEL_FORWARD: model_forward, ATTENTION_FORWARD: attention_forward}


#: Largest |use_cache=False - use_cache=True| logit difference that still counts as equal (float32).
TOLERANCE = 1e-4


def reproduce() -> Reproduction:
    """Compare the tiny model's logits with ``use_cache=False`` and ``use_cache=True`` (float32, 32 tokens)."""
    import torch

    from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_input_ids

    model = build_tiny_model(seed=0)
    ids = tiny_input_ids(32)
    with torch.no_grad():
        cached = model(input_ids=ids, use_cache=True).logits
        uncached = model(input_ids=ids, use_cache=False).logits
    diff = float((cached - uncached).abs().max())
    if diff > TOLERANCE:
        return Reproduction(True, f"use_cache=False logits differ from use_cache=True by {diff:.3g}", "logits-differ")
    return Reproduction(False, f"use_cache=False logits equal use_cache=True logits (max abs diff {diff:.3g})")


PATCH = Patch(
    id="kv-share-nocache",
    title="KV-shared attention layers reuse their source layer's K/V when use_cache=False",
    defect=(
        "with use_cache=False the KV-shared layers compute their own K/V instead of reusing the source "
        "layer's: use_cache=False logits differ from use_cache=True logits (wrong function in the .pte)"
    ),
    needed_on=SpecifierSet(">=4.53.0,<5.6.0"),
    verified_through="5.5.4",
    targets=(
        Target(
            ATTENTION_FORWARD,
            {
                "0d56ce8c632cdb3c": "4.53.0",
                "e1ca134053c0555c": "4.53.1 - 4.53.3",
                "4d460661e105cf89": "4.54.0",
                "eb68a23bb426d85b": "4.54.1 - 4.55.4",
                "9813d94b88a5810e": "4.56.0 - 4.57.6",
                "724cfb3e130cb5b2": "5.0.0rc0",
                "e6d8e616f43efff8": "5.0.0rc1 - 5.0.0rc2",
                "ddf131c5068ba084": "5.0.0rc3 - 5.0.0",
                "30d0e77f27c11598": "5.1.0 - 5.3.0",
                "d5c3d2bf34a6eeee": "5.4.0 - 5.5.4",
            },
        ),
        Target(
            MODEL_FORWARD,
            {
                "7bb8cc99fb75b2d8": "4.53.0",
                "9e2c24b9a1127130": "4.53.1 - 4.53.3",
                "e7f09cbd8d2b57ec": "4.54.0 - 4.55.4",
                "71840b3bcdae33e8": "4.56.0 - 4.57.6",
                "26eed6445cbc5c6f": "5.0.0rc0",
                "9e23886cadc79c04": "5.0.0rc1 - 5.0.0rc2",
                "b877a73aa9359344": "5.0.0rc3 - 5.1.0",
                "039368cd734f0f23": "5.2.0 - 5.3.0",
                "229fb053cfc72233": "5.4.0 - 5.5.4",
            },
        ),
        Target(
            DECODER_FORWARD,
            {
                "59646bb82bc9a3d7": "4.53.0",
                "c5ff99c38a042811": "4.53.1 - 4.54.1",
                "c36fb20723bd9f17": "4.55.0 - 4.55.4",
                "dfb762ce71be14b2": "4.56.0 - 4.57.6",
                "43ff0b4b51341939": "5.0.0rc0",
                "13f2a5e584848a11": "5.0.0rc1 - 5.0.0rc2",
                "8a8a8c3fae6b8a88": "5.0.0rc3 - 5.3.0",
                "e96160d8e13fe149": "5.4.0 - 5.5.4",
            },
            replaced=False,
        ),
    ),
    build=build,
    reproduce=reproduce,
    changes_eager_numerics=True,
    upstream="fixed in 5.6.0 (PR #45489, aligned with Gemma 4's #45312): shared K/V passed explicitly",
    notes=("changes eager numbers on purpose: use_cache=False logits now equal use_cache=True logits",),
)
