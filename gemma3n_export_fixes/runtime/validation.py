"""Validate a ``.pte`` against eager PyTorch on seeded real token ids (``validate``).

The seed repo's validate only looked for NaN/Inf on an all-ones input, so it could not see a wrong
function (kv-share-nocache). Here:

- a fixed-window program is compared with the eager model's ``use_cache=True`` logits: max abs difference,
  top-1 agreement, NaN/Inf;
- a KV-cache program is compared token by token with eager greedy ``generate``: the program is fed the same
  tokens (teacher forcing) and each step's logits are compared, then it decodes greedily on its own and its
  tokens must equal eager ``generate``'s (float32), for at least twice the sliding window when the cache
  is large enough.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Union

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.runtime.loading import runtime_errors

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.export.options import ExportOptions
    from gemma3n_export_fixes.models.sources import LoadedModel

#: Acceptance thresholds of the program vs its reference. A quantized program's reference is the eager model
#: with the same quantization (so the export itself is judged, not the quantization); its error vs the float
#: model is reported next to it (``float_*``), not judged: on the random tiny model logits are close together
#: and int4 flips many argmaxes, which says nothing about a trained model. A quantized program's top-1 agreement
#: with its reference is reported, not judged (minimum 0): XNNPACK's int8 activation kernels differ from torchao's
#: reference by ~0.03 on the tiny model, so argmaxes flip at near-ties (15% of 20 positions on transformers
#: 4.57.6, 5% on 5.23.0, at the same max abs diff); a flip is only possible where the margin is within twice the
#: measured diff, so the diff bound is the judgement.
TOLERANCES = {"float32": 1e-3, "bfloat16": 0.5, "quantized": 0.25}
MIN_TOP1 = {"float32": 1.0, "bfloat16": 0.9, "quantized": 0.0}


def minimum_phrase(min_top1: float) -> str:
    """How a result line states the top-1 threshold."""
    return f"(minimum {min_top1:.0%})" if min_top1 > 0 else "(not judged)"


@dataclass
class Judged:
    """What every validation judges: max abs diff and top-1 agreement vs the reference, NaN/Inf."""

    ok: bool
    max_abs_diff: float
    top1_agreement: float
    finite: bool
    tolerance: float
    min_top1: float
    float_max_abs_diff: float | None
    float_top1_agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diff_top1(got: torch.Tensor, expected: torch.Tensor) -> tuple[bool, float, float]:
    """(all finite, max abs diff (inf when not finite), top-1 agreement) of logits vs reference logits."""
    got, expected = got.float(), expected.float()
    finite = bool(got.isfinite().all())
    diff = float((got - expected).abs().max()) if finite else float("inf")
    return finite, diff, float((got.argmax(-1) == expected.argmax(-1)).float().mean())


def judge(
    got: torch.Tensor, expected: torch.Tensor, kind: str, float_reference: torch.Tensor | None = None
) -> dict[str, Any]:
    """The :class:`Judged` fields of ``got`` vs ``expected`` under ``kind``'s thresholds (``float_*`` optional)."""
    finite, diff, top1 = diff_top1(got, expected)
    tolerance, min_top1 = TOLERANCES[kind], MIN_TOP1[kind]
    float_diff = float_top1 = None
    if float_reference is not None:
        _, float_diff, float_top1 = diff_top1(got, float_reference)
    return {
        "ok": finite and diff <= tolerance and top1 >= min_top1, "max_abs_diff": diff, "top1_agreement": top1,
        "finite": finite, "tolerance": tolerance, "min_top1": min_top1,
        "float_max_abs_diff": float_diff, "float_top1_agreement": float_top1,
    }  # fmt: skip


@dataclass
class ValidationResult(Judged):
    """A fixed-window program vs eager ``use_cache=True`` logits."""

    seq_len: int
    runtime_ms: float
    eager_ms: float


#: A model, or what builds it when called: ``validate``/``validate_kv`` build the float model only after
#: they are done with (and have dropped) a reference they built, so the two never need memory together.
ModelSource = Union["LoadedModel", Callable[[], "LoadedModel"]]


def _obtain(source: ModelSource) -> LoadedModel:
    return source() if callable(source) else source


def reference_model(spec: str, options: ExportOptions) -> LoadedModel:
    """The reference of a program exported with ``options``: the eager model in the program's dtype with the
    program's quantization applied unit by unit (as the export does), its 8da4w/8da8w linears then dequantized
    once (``export.quant.dequantize_linears``: the same numbers, without dequantizing every weight per call)."""
    from gemma3n_export_fixes.export.quant import DYNAMIC_ACTIVATION_QUANTS, dequantize_linears, quantize
    from gemma3n_export_fixes.models.sources import load_model, torch_dtype

    reference = load_model(spec, lazy=True)
    quantize(reference.model, options.qlinear, options.qembedding, torch_dtype(options.dtype))
    if options.qlinear in DYNAMIC_ACTIVATION_QUANTS:
        dequantize_linears(reference.model)
    return reference


def float_source(spec: str, options: ExportOptions, with_float: bool = True) -> ModelSource | None:
    """What builds the float model a quantized program is also compared with (in its natural dtype: bfloat16
    for the real shapes, never a float32 copy of a real-size model); ``None`` for float programs."""
    from gemma3n_export_fixes.models.sources import load_model

    return (lambda: load_model(spec)) if options.quantized and with_float else None


def validate(
    method: Any, reference: ModelSource, kind: str = "float32", seed: int = 7, float_model: ModelSource | None = None
) -> ValidationResult:
    """Run ``method`` on seeded token ids and compare with eager ``use_cache=True`` logits of ``reference``
    (then, if given, of ``float_model``, built once the reference built here is dropped)."""
    import torch

    from gemma3n_export_fixes.export.memory import release_freed
    from gemma3n_export_fixes.models.tiny import tiny_input_ids

    meta = method.metadata.input_tensor_meta(0)
    sizes = list(meta.sizes())
    if len(sizes) != 2 or sizes[0] != 1:
        raise UserError(f"the program's input is {sizes}, expected [1, seq_len] token ids")
    seq_len = sizes[1]
    loaded = _obtain(reference)
    ids = tiny_input_ids(seq_len, seed=seed, vocab_size=loaded.vocab_size)
    start = time.perf_counter()
    with runtime_errors():
        (logits,) = method.execute([ids])
    runtime_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    with torch.no_grad():
        expected = loaded.model(input_ids=ids, use_cache=True).logits
    eager_ms = (time.perf_counter() - start) * 1000
    del loaded
    if tuple(logits.shape) != tuple(expected.shape):
        raise UserError(f"the program returns logits of shape {tuple(logits.shape)}, eager {tuple(expected.shape)}")
    float_reference = None
    if float_model is not None:
        release_freed()
        with torch.no_grad():
            float_reference = _obtain(float_model).model(input_ids=ids, use_cache=True).logits
    return ValidationResult(
        **judge(logits, expected, kind, float_reference), seq_len=seq_len, runtime_ms=runtime_ms, eager_ms=eager_ms
    )


@dataclass
class KVValidationResult(Judged):
    """Token-by-token comparison of a KV-cache program with eager greedy ``generate``."""

    prompt_len: int
    new_tokens: int
    sliding_window: int
    max_seq_len: int
    tokens_match: bool
    first_divergence: int | None
    eager_tokens: list[int]
    program_tokens: list[int]
    runtime_ms_per_token: float


#: New tokens a KV validation decodes by default for a model of more than :data:`AT_SIZE_PARAMETERS`: its eager
#: reference (torchao dequantizes every quantized weight in every call) did not finish 251 E2B tokens in 24 min.
AT_SIZE_NEW_TOKENS = 32
AT_SIZE_PARAMETERS = 1e9


def kv_validation_length(max_seq_len: int, sliding_window: int, prompt_len: int, limit: int | None = None) -> int:
    """New tokens to decode: twice the sliding window past the prompt (plus 4), within the cache and ``limit``."""
    return max(1, min(max_seq_len - prompt_len, 2 * sliding_window + 4, limit or max_seq_len))


def default_new_tokens(parameters: int) -> int | None:
    """The default cap on the new tokens of a model of ``parameters``: :data:`AT_SIZE_NEW_TOKENS` at size,
    none below."""
    return AT_SIZE_NEW_TOKENS if parameters > AT_SIZE_PARAMETERS else None


def _eager_greedy(model: Any, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """Eager greedy ``generate``: (new tokens, next-token logits per step)."""
    import torch

    with torch.no_grad():
        generated = model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    return generated.sequences[0, prompt.shape[1] :].tolist(), torch.stack([s[0].float() for s in generated.logits])


def validate_kv(
    program: Any,
    reference: ModelSource,
    kind: str = "float32",
    seed: int = 7,
    float_model: ModelSource | None = None,
    max_new_tokens: int | None = None,
) -> KVValidationResult:
    """Teacher-forced logits and free greedy tokens of a KV-cache ``program`` vs eager ``generate`` of
    ``reference`` (:func:`kv_validation_length` new tokens, at most ``max_new_tokens`` when given: the CLI
    passes :func:`default_new_tokens` of the model's size).

    A quantized program's float comparison is teacher-forced on the float model's own greedy tokens; the float
    model is built once the reference built here is dropped.
    """
    import torch

    from gemma3n_export_fixes.export.memory import release_freed
    from gemma3n_export_fixes.models.tiny import tiny_input_ids
    from gemma3n_export_fixes.runtime.decoding import runtime_decoder

    loaded = _obtain(reference)
    decoder = runtime_decoder(program)
    window = int(loaded.config.get("sliding_window") or 0)
    prompt_len = min(5, decoder.max_seq_len - 1)
    new_tokens = kv_validation_length(decoder.max_seq_len, window, prompt_len, max_new_tokens)
    prompt = tiny_input_ids(prompt_len, seed=seed, vocab_size=loaded.vocab_size)
    eager_tokens, expected = _eager_greedy(loaded.model, prompt, new_tokens)
    del loaded
    ids = prompt[0].tolist()
    start = time.perf_counter()
    forced = torch.stack(decoder.teacher_forced(ids, eager_tokens))
    elapsed = time.perf_counter() - start
    program_tokens = decoder.greedy(ids, new_tokens).tokens
    judged = judge(forced, expected, kind)
    if float_model is not None:
        release_freed()
        float_tokens, float_logits = _eager_greedy(_obtain(float_model).model, prompt, new_tokens)
        float_forced = torch.stack(decoder.teacher_forced(ids, float_tokens))
        _, judged["float_max_abs_diff"], judged["float_top1_agreement"] = diff_top1(float_forced, float_logits)
    divergence = next((i for i, (a, b) in enumerate(zip(eager_tokens, program_tokens, strict=False)) if a != b), None)
    if divergence is None and len(program_tokens) != len(eager_tokens):
        divergence = min(len(program_tokens), len(eager_tokens))
    match = divergence is None
    judged["ok"] = judged["ok"] and (match or kind != "float32")
    return KVValidationResult(
        **judged, prompt_len=prompt_len, new_tokens=new_tokens, sliding_window=window,
        max_seq_len=decoder.max_seq_len, tokens_match=match, first_divergence=divergence,
        eager_tokens=eager_tokens, program_tokens=program_tokens,
        runtime_ms_per_token=round(elapsed * 1000 / max(1, len(eager_tokens)), 3),
    )  # fmt: skip
