"""The environment switches, read by the start-up trigger and by the engine (stdlib only, no other import).

- ``GEMMA3N_EXPORT_FIXES=0`` (or false/no/off/disable/disabled): no automatic patching in this process; the
  start-up trigger does not arm. ``gemma3n_export_fixes.apply()`` still works.
- ``GEMMA3N_EXPORT_FIXES_DISABLE=gaussian-topk,altup-clamp``: the automatic patching leaves the named patches
  out (comma or space separated; ``status`` reports them ``disabled``). Like OpenTelemetry's
  ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``; an explicit ``apply(["gaussian-topk"])`` still applies one.
- ``GEMMA3N_EXPORT_FIXES_XNNPACK_FORMS=0``: ``export --recipe xnnpack`` lowers the graph as ``torch.export`` left
  it, without the XNNPACK-friendly rewrites of ``export/xnnpack_forms.py`` (for comparison, or if one misbehaves).
- ``GEMMA3N_EXPORT_FIXES_LOWERING_SHORTCUTS=0``: ``export`` runs torch's strict trace and ExecuTorch's lowering
  without the shortcuts of ``export/strict_export.py`` (the weights not cloned while Dynamo traces) and
  ``export/lowering.py`` (validating once, skipping idle XNNPACK passes, legalizing in place, the merge check and
  dependency relation as bitsets, the preprocess copies sharing the weights). Each leaves the program the same.
"""

from __future__ import annotations

import os

ENV_VAR = "GEMMA3N_EXPORT_FIXES"
DISABLE_VAR = "GEMMA3N_EXPORT_FIXES_DISABLE"
FORMS_VAR = "GEMMA3N_EXPORT_FIXES_XNNPACK_FORMS"
SHORTCUTS_VAR = "GEMMA3N_EXPORT_FIXES_LOWERING_SHORTCUTS"
_OFF_VALUES = frozenset({"0", "false", "no", "off", "disable", "disabled"})


def disabled_by_env() -> bool:
    """True when ``GEMMA3N_EXPORT_FIXES`` asks for this process to stay unpatched."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _OFF_VALUES


def disabled_patches() -> frozenset[str]:
    """The patch ids ``GEMMA3N_EXPORT_FIXES_DISABLE`` names (unknown ids are kept: the engine reports them)."""
    text = os.environ.get(DISABLE_VAR, "")
    return frozenset(part for part in text.replace(",", " ").split() if part)


def xnnpack_forms_enabled() -> bool:
    """False when ``GEMMA3N_EXPORT_FIXES_XNNPACK_FORMS`` turns the XNNPACK graph rewrites off."""
    return os.environ.get(FORMS_VAR, "").strip().lower() not in _OFF_VALUES


def lowering_shortcuts_enabled() -> bool:
    """False when ``GEMMA3N_EXPORT_FIXES_LOWERING_SHORTCUTS`` turns the lowering shortcuts off."""
    return os.environ.get(SHORTCUTS_VAR, "").strip().lower() not in _OFF_VALUES
