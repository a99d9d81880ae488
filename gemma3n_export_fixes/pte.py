"""The contract of a ``.pte`` written by this package: what ``export`` writes and ``runtime`` reads.

Both sides import it (``runtime`` imports nothing from ``export`` for it); every name below has its one
definition here:

- the file: an ExecuTorch program (a flatbuffer with file identifier ``ET`` + 2 digits at byte 4, and, when
  ExecuTorch writes one, the extended header ``eh00`` at byte 8 sizing the flatbuffer and the segments that
  follow it): :func:`check_pte_header` refuses what the runtime would choke on, :func:`extended_header` and
  :func:`operator_table` read it without loading it;
- its methods: :data:`FORWARD_METHOD`, and for a KV-cache program the constant methods of ExecuTorch's LLM
  runner conventions (``export.kvcache.constant_methods`` gives their values; :data:`KV_MARKER_METHOD` tells a
  KV-cache program from a fixed window);
- the kernels it may call beyond the portable ones: quantized embeddings (:data:`EMBEDDING_KERNELS`), which
  :func:`load_quantized_kernels` loads into this process (a device runner links ``quantized_ops_lib``);
- the files next to ``FILE.pte``: the export record ``FILE.json`` (the sidecar, :data:`RECORD_FORMAT`,
  :func:`sidecar_path`, :func:`read_sidecar`) and the checkpoint's tokenizer ``FILE.tokenizer.json``
  (:func:`tokenizer_path`), for ExecuTorch's LLM runner.

Import-light: the standard library and ``errors`` at import; ExecuTorch only inside :func:`load_quantized_kernels`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.errors import UserError

# -- methods -------------------------------------------------------------------------------------------------

#: The method that computes: ``forward(input_ids [1, T], cache_position [T]) -> logits`` in a KV-cache program,
#: ``forward(input_ids [1, seq_len]) -> logits`` in a fixed window.
FORWARD_METHOD = "forward"
#: The constant method a KV-cache program carries to say so (``True``).
KV_MARKER_METHOD = "use_kv_cache"
#: The other constant methods of a KV-cache program (ExecuTorch LLM runner conventions; no inputs, one value).
MAX_SEQ_LEN_METHOD = "get_max_seq_len"
MAX_CONTEXT_LEN_METHOD = "get_max_context_len"
VOCAB_SIZE_METHOD = "get_vocab_size"
MAX_BATCH_SIZE_METHOD = "get_max_batch_size"
DYNAMIC_SHAPE_METHOD = "enable_dynamic_shape"
SLIDING_WINDOW_METHOD = "get_sliding_window"
#: ``False``: transformers' attention, not ExecuTorch's custom SDPA op.
CUSTOM_SDPA_METHOD = "use_sdpa_with_kv_cache"
#: Present when the checkpoint's config names them (older programs have no ``get_eos_ids``).
BOS_ID_METHOD = "get_bos_id"
EOS_IDS_METHOD = "get_eos_ids"

# -- kernels -------------------------------------------------------------------------------------------------

#: The kernel a program's quantized embeddings call, per ``--qembedding`` scheme.
EMBEDDING_KERNELS = {"4w": "quantized_decomposed::embedding_4bit", "8w": "quantized_decomposed::embedding_byte"}


def load_quantized_kernels() -> None:
    """Load ExecuTorch's quantized kernels (``quantized_decomposed::embedding_4bit`` and friends) into this
    process: a program with quantized embeddings fails without them (``embedding_4bit.dtype_out not found``);
    a device runner must link them the same way (``quantized_ops_lib``). The runtime is imported first: on
    ExecuTorch 1.0.1 the library registers its kernels with the runtime only when the runtime is already
    loaded (imported the other way round, ``embedding_4bit`` is missing when a program runs: error 0x14)."""
    import executorch.extension.pybindings.portable_lib
    import executorch.kernels.quantized  # noqa: F401


# -- the file ------------------------------------------------------------------------------------------------


def extended_header(head: bytes) -> tuple[int, int, int] | None:
    """Program size, segment base offset and segment size from the extended header ``eh00`` at byte 8 of a
    program's first 40 bytes; ``None`` without one, ``ValueError`` when it is cut short or malformed.

    Its length field (bytes 12-16) says which form it is: 24 bytes (no segment size, older ExecuTorch: 0, as
    ExecuTorch's ``_ExtendedHeader.from_bytes`` reads it) or 32 (with it)."""
    if head[8:12] != b"eh00":
        return None
    length = int.from_bytes(head[12:16], "little") if len(head) >= 16 else 0
    fields = 3 if length > 24 else 2
    if len(head) < 16 + 8 * fields:
        raise ValueError(f"truncated ExecuTorch program ({len(head)} bytes: the extended header needs more)")
    if length < 24:
        raise ValueError(f"malformed ExecuTorch extended header (length {length}, at least 24)")
    return (*struct.unpack_from(f"<{fields}Q", head, 16), 0)[:3]


def check_pte_header(path: Path) -> None:
    """Refuse files the runtime would choke on (a corrupt buffer can abort the whole process).

    An ExecuTorch program is a flatbuffer with file identifier ``ET`` + 2 digits at byte 4; when the
    extended header ``eh00`` follows, it must be whole, and its program size and segment offsets must fit inside
    the file.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(40)
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        raise UserError(f"{path}: not an ExecuTorch program (no ET flatbuffer identifier)")
    try:
        extended = extended_header(head)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    if extended is not None:
        program_size, segment_base, segment_size = extended
        if program_size > size or segment_base + segment_size > size:
            raise UserError(f"{path}: truncated ExecuTorch program ({size} bytes, header says more)")


def operator_table(path: Path, limit: int = 64 << 20) -> bytes:
    """The bytes that hold the program's operator table: the flatbuffer, which the extended header sizes
    (delegate and constant segments follow it); without that header the first ``limit`` bytes."""
    with path.open("rb") as f:
        extended = extended_header(f.read(40))
        f.seek(0)
        return f.read(min(extended[0] if extended else limit, limit))


# -- the files next to it ------------------------------------------------------------------------------------

#: The ``format`` of the export record (the sidecar).
RECORD_FORMAT = "gemma3n-export-fixes/export/2"


def sidecar_path(pte: Path) -> Path:
    """Where the export record of ``pte`` lives: ``FILE.json`` next to ``FILE.pte``."""
    return pte.with_suffix(".json")


def tokenizer_path(pte: Path) -> Path:
    """``FILE.tokenizer.json`` next to ``FILE.pte``: the checkpoint's tokenizer, for ExecuTorch's LLM runner."""
    return pte.with_suffix(".tokenizer.json")


def read_sidecar(pte: Path) -> dict[str, Any] | None:
    """The export record written next to ``pte``, if there is a readable one."""
    try:
        return json.loads(sidecar_path(pte).read_text())
    except (OSError, ValueError):
        return None
