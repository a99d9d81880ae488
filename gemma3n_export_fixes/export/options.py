"""What an export is asked to build, in optimum-cli's words, and the one place those requests are checked.

The fields are named as ``optimum-cli export executorch`` names its flags (``recipe``, ``qlinear``,
``qembedding``, ``max_seq_len``) and keep those names from the command line to the quantizer; the defaults are
the command line's (it reads them from here): what a phone runs, a KV-cache program on XNNPACK with 8da4w linears
and 4w embeddings. The CLI checks the options (and the output path) before it loads a model; ``export_pte`` does it
for library callers. Both call :meth:`ExportOptions.check`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.export.quant import DYNAMIC_ACTIVATION_QUANTS, EMBEDDING_QUANTS, LINEAR_QUANTS
from gemma3n_export_fixes.models.sources import DTYPES

RECIPES = ("xnnpack", "portable")
#: ``--qlinear`` when it is not given: what each recipe runs (XNNPACK's dynamically quantized kernels; portable
#: kernels in float).
DEFAULT_QLINEAR = {"xnnpack": "8da4w", "portable": "none"}
#: ``--qlinear`` values the command line takes: optimum-executorch's names, the older ``int8`` for ``8w``, and
#: ``4w``, which it refuses with the reason (see ``from_cli``).
CLI_LINEAR_QUANTS = (*LINEAR_QUANTS, "4w", "int8")
#: Older spellings (records written before the one vocabulary, and the CLI's aliases) -> today's.
_RENAMED = {"backend": "recipe", "quant": "qlinear", "quant_embeddings": "qembedding"}
_ALIASES = {"int8": "8w"}


@dataclass
class ExportOptions:
    recipe: str = "xnnpack"
    #: ``None``: the recipe's default (:data:`DEFAULT_QLINEAR`)
    qlinear: str | None = None
    qembedding: str = "4w"
    dtype: str = "float32"
    kv_cache: bool = True
    max_seq_len: int = 128
    #: the fixed-window program's tokens (``kv_cache=False``)
    seq_len: int = 32
    #: Build combinations known to produce a broken program (for the reproducer of that upstream bug).
    allow_known_broken: bool = False

    def __post_init__(self) -> None:
        if self.qlinear is None:
            self.qlinear = DEFAULT_QLINEAR.get(self.recipe, "none")
        self.qlinear = _ALIASES.get(self.qlinear, self.qlinear)

    def check(self, transformers_version: str | None = None) -> None:
        """``UserError`` for options that cannot work (together, or on ``transformers_version``)."""
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
        if self.max_seq_len < 2:
            raise UserError(f"--max_seq_len must be at least 2, got {self.max_seq_len}")
        for name, value, allowed in (
            ("--dtype", self.dtype, DTYPES),
            ("--recipe", self.recipe, RECIPES),
            ("--qlinear", self.qlinear, LINEAR_QUANTS),
            ("--qembedding", self.qembedding, EMBEDDING_QUANTS),
        ):
            if value not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.recipe == "xnnpack" and self.qlinear == "8w" and not self.allow_known_broken:
            raise UserError(
                "--qlinear 8w (int8 weight-only) with --recipe xnnpack fails at lowering (ExecuTorch's "
                "ConvertToLinearPass) or, lowered without our XNNPACK forms, builds a .pte that fails at execute "
                "(an upstream ExecuTorch/torchao defect): use --recipe portable, or --qlinear 8da8w"
            )
        if self.qlinear in DYNAMIC_ACTIVATION_QUANTS and self.recipe != "xnnpack":  # only XNNPACK runs them
            raise UserError(
                f"--qlinear {self.qlinear} runs on XNNPACK's dynamically quantized kernels: use --recipe xnnpack (or "
                "--qlinear none)"
            )
        if self.kv_cache and transformers_version is not None:
            from gemma3n_export_fixes.export.kvcache import unsupported_reason

            if reason := unsupported_reason(transformers_version):
                raise UserError(reason)

    @classmethod
    def from_cli(cls, **values: Any) -> ExportOptions:
        """Options from the command line (the fields' names; ``qlinear=None``: the recipe's default); ``4w`` is
        refused with what to use instead, ``int8`` is ``8w``."""
        if values.get("qlinear") == "4w":
            raise UserError("--qlinear 4w (weight-only int4 linears) is not offered: use --qlinear 8da4w (int4 "
                            "weights with int8 dynamic activations, XNNPACK)")  # fmt: skip
        return cls(**values)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (what the command line shows and uses)."""
        return next(f.default for f in fields(cls) if f.name == name)

    @property
    def quantized(self) -> bool:
        return self.qlinear != "none" or self.qembedding != "none"

    @property
    def kind(self) -> str:
        """How a validation judges the program: ``quantized``, or its float dtype."""
        return "quantized" if self.quantized else self.dtype

    def describe(self) -> dict[str, Any]:
        """The options as recorded in the ``.json`` next to the ``.pte``."""
        shown = {k: v for k, v in vars(self).items() if k != "allow_known_broken"}
        shown.pop("seq_len" if self.kv_cache else "max_seq_len")
        return shown

    @classmethod
    def from_record(cls, options: dict[str, Any]) -> ExportOptions:
        """The options of an export record (``FILE.json``'s ``options``), including records of older releases
        (``backend``/``quant``/``quant_embeddings``, ``int8``, boolean embeddings; ``kv_cache`` absent: fixed)."""
        renamed = {_RENAMED.get(k, k): v for k, v in options.items()}
        embeddings = renamed.get("qembedding", "none")
        renamed["qembedding"] = {True: "8w", False: "none", None: "none"}.get(embeddings, embeddings)
        renamed.setdefault("kv_cache", False)  # records before KV-cache programs
        renamed.setdefault("qlinear", "none")
        known = {k: v for k, v in renamed.items() if k in cls.__dataclass_fields__}
        return cls(**known)
