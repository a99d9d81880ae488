"""Validate a ``.pte`` against eager PyTorch on seeded real token ids.

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

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.errors import UserError, require

if TYPE_CHECKING:
    import torch

    from gemma3n_export_fixes.models import LoadedModel

#: Acceptance thresholds of the program vs its reference. A quantized program's reference is the eager model
#: with the same quantization (so the export itself is judged, not the quantization); its error vs the float
#: model is reported next to it (``float_*``), not judged: on the random tiny model logits are close together
#: and int4 flips many argmaxes, which says nothing about a trained model.
TOLERANCES = {"float32": 1e-3, "bfloat16": 0.5, "quantized": 0.25}
MIN_TOP1 = {"float32": 1.0, "bfloat16": 0.9, "quantized": 0.9}


@dataclass
class ValidationResult:
    ok: bool
    max_abs_diff: float
    top1_agreement: float
    finite: bool
    tolerance: float
    min_top1: float
    seq_len: int
    runtime_ms: float
    eager_ms: float
    float_max_abs_diff: float | None = None
    float_top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pte_header(path: Path) -> None:
    """Refuse files the runtime would choke on (a corrupt buffer can abort the whole process).

    An ExecuTorch program is a flatbuffer with file identifier ``ET`` + 2 digits at byte 4; when the
    extended header ``eh00`` follows, its program size and segment offsets must fit inside the file.
    """
    import struct

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(40)
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        raise UserError(f"{path}: not an ExecuTorch program (no ET flatbuffer identifier)")
    if head[8:12] == b"eh00" and len(head) >= 32:
        program_size, segment_base, segment_size = struct.unpack_from("<QQQ", head, 16)
        if program_size > size or segment_base + segment_size > size:
            raise UserError(f"{path}: truncated ExecuTorch program ({size} bytes, header says more)")


def load_program(path: Path) -> Any:
    """A ``.pte`` loaded in the ExecuTorch runtime (``Program``); ``UserError`` when it is not one."""
    require("executorch", "validate", "executorch")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    check_pte_header(path)
    # kernels for quantized_decomposed ops (int8 embeddings); a device runner links them the same way
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(str(path))
    except Exception as exc:
        raise UserError(f"{path}: not a loadable ExecuTorch program ({str(exc).splitlines()[0]})") from None
    if "forward" not in program.method_names:
        raise UserError(f"{path}: the program has no forward method")
    return program


def is_kv_program(program: Any) -> bool:
    from gemma3n_export_fixes.kvcache import KV_MARKER_METHOD

    return KV_MARKER_METHOD in program.method_names


def load_pte(path: Path) -> Any:
    """The ``forward`` method of a ``.pte`` in the ExecuTorch runtime; ``UserError`` when it is not one."""
    program = load_program(path)
    try:
        return program.load_method("forward")
    except Exception as exc:
        raise UserError(f"{path}: not a loadable ExecuTorch program ({str(exc).splitlines()[0]})") from None


def sidecar(path: Path) -> dict[str, Any] | None:
    """The export record written next to the ``.pte``, if there is one."""
    from gemma3n_export_fixes.exporting import sidecar_path

    side = sidecar_path(path)
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


def reference_models(spec: str, options: dict[str, Any]) -> tuple[LoadedModel, LoadedModel | None]:
    """(reference, float model) for a program exported with ``options`` (its record's ``options``).

    The reference is the eager model in the program's dtype with the program's quantization applied; the
    float model is returned only for quantized programs (``None`` otherwise).
    """
    from gemma3n_export_fixes.exporting import torch_dtype
    from gemma3n_export_fixes.models import load_model
    from gemma3n_export_fixes.quant import quantize

    dtype = torch_dtype(options.get("dtype", "float32"))
    quant = options.get("quant", "none")
    embeddings = options.get("quant_embeddings", "none")
    embeddings = {True: "8w", False: "none", None: "none"}.get(embeddings, embeddings)  # records before 4w
    reference = load_model(spec, dtype=dtype)
    if quant == "none" and embeddings == "none":
        return reference, None
    quantize(reference.model, quant, embeddings)
    return reference, load_model(spec, dtype=dtype)


def _diff_top1(got: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    got, expected = got.float(), expected.float()
    diff = float((got - expected).abs().max()) if bool(got.isfinite().all()) else float("inf")
    return diff, float((got.argmax(-1) == expected.argmax(-1)).float().mean())


def validate(
    method: Any, loaded: LoadedModel, kind: str = "float32", seed: int = 7, float_model: LoadedModel | None = None
) -> ValidationResult:
    """Run ``method`` on seeded token ids and compare with eager ``use_cache=True`` logits."""
    import torch

    from gemma3n_export_fixes.tiny import tiny_input_ids

    meta = method.metadata.input_tensor_meta(0)
    sizes = list(meta.sizes())
    if len(sizes) != 2 or sizes[0] != 1:
        raise UserError(f"the program's input is {sizes}, expected [1, seq_len] token ids")
    seq_len = sizes[1]
    ids = tiny_input_ids(seq_len, seed=seed, vocab_size=loaded.vocab_size)
    start = time.perf_counter()
    try:
        (logits,) = method.execute([ids])
    except Exception as exc:
        raise UserError(f"the ExecuTorch runtime failed to run the program ({str(exc).splitlines()[0]})") from None
    runtime_ms = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    with torch.no_grad():
        expected = loaded.model(input_ids=ids, use_cache=True).logits
    eager_ms = (time.perf_counter() - start) * 1000
    result = compare(logits, expected, kind, seq_len, runtime_ms, eager_ms)
    if float_model is not None:
        with torch.no_grad():
            reference = float_model.model(input_ids=ids, use_cache=True).logits
        result.float_max_abs_diff, result.float_top1_agreement = _diff_top1(logits, reference)
    return result


def compare(
    logits: torch.Tensor, expected: torch.Tensor, kind: str, seq_len: int, runtime_ms: float, eager_ms: float
) -> ValidationResult:
    if tuple(logits.shape) != tuple(expected.shape):
        raise UserError(f"the program returns logits of shape {tuple(logits.shape)}, eager {tuple(expected.shape)}")
    logits, expected = logits.float(), expected.float()
    finite = bool(logits.isfinite().all())
    diff = float((logits - expected).abs().max()) if finite else float("inf")
    top1 = float((logits.argmax(-1) == expected.argmax(-1)).float().mean())
    tolerance, min_top1 = TOLERANCES[kind], MIN_TOP1[kind]
    ok = finite and diff <= tolerance and top1 >= min_top1
    return ValidationResult(ok, diff, top1, finite, tolerance, min_top1, seq_len, runtime_ms, eager_ms)


@dataclass
class KVValidationResult:
    """Token-by-token comparison of a KV-cache program with eager greedy ``generate``."""

    ok: bool
    max_abs_diff: float
    top1_agreement: float
    finite: bool
    tolerance: float
    min_top1: float
    prompt_len: int
    new_tokens: int
    sliding_window: int
    max_seq_len: int
    tokens_match: bool
    first_divergence: int | None
    eager_tokens: list[int]
    program_tokens: list[int]
    runtime_ms_per_token: float
    float_max_abs_diff: float | None = None
    float_top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kv_validation_length(max_seq_len: int, sliding_window: int, prompt_len: int) -> int:
    """New tokens to decode: twice the sliding window past the prompt (plus 4), within the cache."""
    return max(1, min(max_seq_len - prompt_len, 2 * sliding_window + 4))


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
    program: Any, loaded: LoadedModel, kind: str = "float32", seed: int = 7, float_model: LoadedModel | None = None
) -> KVValidationResult:
    """Teacher-forced logits and free greedy tokens of a KV-cache ``program`` vs eager ``generate``."""
    import torch

    from gemma3n_export_fixes.kvcache import runtime_decoder
    from gemma3n_export_fixes.tiny import tiny_input_ids

    decoder = runtime_decoder(program)
    window = int(loaded.config.get("sliding_window") or 0)
    prompt_len = min(5, decoder.max_seq_len - 1)
    new_tokens = kv_validation_length(decoder.max_seq_len, window, prompt_len)
    prompt = tiny_input_ids(prompt_len, seed=seed, vocab_size=loaded.vocab_size)
    eager_tokens, expected = _eager_greedy(loaded.model, prompt, new_tokens)
    ids = prompt[0].tolist()
    start = time.perf_counter()
    try:
        forced = torch.stack(decoder.teacher_forced(ids, eager_tokens))
        elapsed = time.perf_counter() - start
        program_tokens = decoder.greedy(ids, new_tokens)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the ExecuTorch runtime failed to run the program ({str(exc).splitlines()[0]})") from None
    finite = bool(forced.isfinite().all())
    diff, top1 = _diff_top1(forced, expected)
    float_diff = float_top1 = None
    if float_model is not None:
        float_tokens, float_logits = _eager_greedy(float_model.model, prompt, new_tokens)
        float_forced = torch.stack(decoder.teacher_forced(ids, float_tokens))
        float_diff, float_top1 = _diff_top1(float_forced, float_logits)
    divergence = next((i for i, (a, b) in enumerate(zip(eager_tokens, program_tokens, strict=False)) if a != b), None)
    if divergence is None and len(program_tokens) != len(eager_tokens):
        divergence = min(len(program_tokens), len(eager_tokens))
    tolerance, min_top1 = TOLERANCES[kind], MIN_TOP1[kind]
    match = divergence is None
    ok = finite and diff <= tolerance and top1 >= min_top1 and (match or kind != "float32")
    return KVValidationResult(
        ok, diff, top1, finite, tolerance, min_top1, prompt_len, new_tokens, window, decoder.max_seq_len,
        match, divergence, eager_tokens, program_tokens, round(elapsed * 1000 / max(1, len(eager_tokens)), 3),
        float_diff, float_top1,
    )  # fmt: skip
