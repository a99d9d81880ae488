"""What the export's steps hand each other (:mod:`~gemma3n_export_fixes.export.program`'s trace -> lower -> write;
the lowered cache stands in for ``lower``)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Traced:
    """What :func:`trace` hands to :func:`lower`: the exported program and the program's constant methods."""

    exported: Any
    methods: dict[str, Any]


@dataclass
class Lowered:
    """A program ready to write: ``program`` (an ``ExecutorchProgramManager``) or ``cached`` (a stored ``.pte`` of
    the same lowering, see :mod:`~gemma3n_export_fixes.export.lowered_cache`), and what the lowering did."""

    program: Any = None
    cached: Path | None = None
    lowering: dict[str, Any] = field(default_factory=dict)

    def write_to(self, handle: Any) -> None:
        if self.cached is not None:
            with open(self.cached, "rb") as source:
                shutil.copyfileobj(source, handle, 1 << 22)
        else:
            self.program.write_to_file(handle)
