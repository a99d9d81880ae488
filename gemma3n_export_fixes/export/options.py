"""What an export is asked to build, and the one place those requests are checked.

The CLI checks the options (and the output path) before it loads a model; ``export_pte`` checks them again
for library callers. Both call :meth:`ExportOptions.check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.export.quant import DYNAMIC_ACTIVATION_QUANTS, EMBEDDING_QUANTS, LINEAR_QUANTS
from gemma3n_export_fixes.models.sources import DTYPES

BACKENDS = ("xnnpack", "portable")
QUANTS = LINEAR_QUANTS
#: ``--qlinear`` values: optimum-executorch's names (``8w`` is our ``int8``; ``4w`` is refused, see ``from_cli``).
CLI_LINEAR_QUANTS = ("none", "8da4w", "8da8w", "8w", "4w", "int8")


@dataclass
class ExportOptions:
    seq_len: int = 32
    dtype: str = "float32"
    backend: str = "xnnpack"
    quant: str = "none"
    quant_embeddings: str = "none"
    kv_cache: bool = False
    max_seq_len: int = 128
    #: Build combinations known to produce a broken program (for the reproducer of that upstream bug).
    allow_known_broken: bool = False

    def check(self, transformers_version: str | None = None) -> None:
        """``UserError`` for options that cannot work (together, or on ``transformers_version``)."""
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
        if self.max_seq_len < 2:
            raise UserError(f"--max_seq_len must be at least 2, got {self.max_seq_len}")
        for name, value, allowed in (
            ("--dtype", self.dtype, DTYPES),
            ("--recipe", self.backend, BACKENDS),
            ("--qlinear", self.quant, QUANTS),
            ("--qembedding", self.quant_embeddings, EMBEDDING_QUANTS),
        ):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.backend == "xnnpack" and self.quant == "int8" and not self.allow_known_broken:
            raise UserError(
                "--qlinear 8w (int8 weight-only) with --recipe xnnpack fails at lowering (ExecuTorch's "
                "ConvertToLinearPass) or, lowered without our XNNPACK forms, builds a .pte that fails at execute "
                "(an upstream ExecuTorch/torchao defect): use --recipe portable, or --qlinear 8da8w"
            )
        if self.quant in DYNAMIC_ACTIVATION_QUANTS and self.backend != "xnnpack":  # only XNNPACK runs them
            raise UserError(
                f"--qlinear {self.quant} runs on XNNPACK's dynamically quantized kernels: use --recipe xnnpack (or "
                "--qlinear none)"
            )
        if self.kv_cache and transformers_version is not None:
            from gemma3n_export_fixes.export.kvcache import unsupported_reason

            if reason := unsupported_reason(transformers_version):
                raise UserError(reason)

    @classmethod
    def from_cli(cls, quant: str | None, backend: str, **values: Any) -> ExportOptions:
        """Options from the command line's names: ``--qlinear`` unset means 8da4w on XNNPACK and none on
        portable (the phone default, and what each backend runs); ``8w`` is ``int8``."""
        if quant == "4w":
            raise UserError("--qlinear 4w (weight-only int4 linears) is not offered: use --qlinear 8da4w (int4 "
                            "weights with int8 dynamic activations, XNNPACK)")  # fmt: skip
        if quant is None:
            quant = "8da4w" if backend == "xnnpack" else "none"
        return cls(quant={"8w": "int8"}.get(quant, quant), backend=backend, **values)

    @property
    def quantized(self) -> bool:
        return self.quant != "none" or self.quant_embeddings != "none"

    @property
    def kind(self) -> str:
        """How a validation judges the program: ``quantized``, or its float dtype."""
        return "quantized" if self.quantized else self.dtype

    def describe(self) -> dict[str, Any]:
        """The options as recorded in the ``.json`` next to the ``.pte``."""
        shown = {k: v for k, v in vars(self).items() if k != "allow_known_broken"}
        if self.kv_cache:
            shown.pop("seq_len")
        else:
            shown.pop("max_seq_len")
        return shown

    @classmethod
    def from_record(cls, options: dict[str, Any]) -> ExportOptions:
        """The options of an export record (``FILE.json``'s ``options``), including records of older releases."""
        embeddings = options.get("quant_embeddings", "none")
        embeddings = {True: "8w", False: "none", None: "none"}.get(embeddings, embeddings)  # records before 4w
        known = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "quant_embeddings": embeddings})
