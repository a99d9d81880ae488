"""Validate a ``.pte`` against eager PyTorch: real token ids, ``use_cache=True`` logits as the reference.

The seed repo's validate only looked for NaN/Inf on an all-ones input, so it could not see a wrong
function (kv-share-nocache). This compares the runtime's logits with the eager model's on seeded random
token ids: max abs difference, top-1 agreement, NaN/Inf.
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

#: Default acceptance thresholds: float32 without quantization must match closely; quantized or bf16
#: programs are judged by top-1 agreement and a looser bound.
TOLERANCES = {"float32": 1e-3, "bfloat16": 0.5, "quantized": 1.0}
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


def load_pte(path: Path) -> Any:
    """The ``forward`` method of a ``.pte`` in the ExecuTorch runtime; ``UserError`` when it is not one."""
    require("executorch", "validate", "executorch")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    check_pte_header(path)
    # kernels for quantized_decomposed ops (int8 embeddings); a device runner links them the same way
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    try:
        program = Runtime.get().load_program(str(path))
        method = program.load_method("forward")
    except Exception as exc:
        raise UserError(f"{path}: not a loadable ExecuTorch program ({str(exc).splitlines()[0]})") from None
    if method is None:
        raise UserError(f"{path}: the program has no forward method")
    return method


def sidecar(path: Path) -> dict[str, Any] | None:
    """The export record written next to the ``.pte``, if there is one."""
    side = path.with_suffix(".json")
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None


def validate(method: Any, loaded: LoadedModel, kind: str = "float32", seed: int = 7) -> ValidationResult:
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
    return compare(logits, expected, kind, seq_len, runtime_ms, eager_ms)


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
