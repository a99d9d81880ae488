"""The environment switches, read by the start-up trigger and by the engine (stdlib only, no other import).

- ``GEMMA3N_EXPORT_FIXES=0`` (or false/no/off/disable/disabled): no automatic patching in this process; the
  start-up trigger does not arm. ``gemma3n_export_fixes.apply()`` still works.
- ``GEMMA3N_EXPORT_FIXES_DISABLE=gaussian-topk,altup-clamp``: the automatic patching leaves the named patches
  out (comma or space separated; ``status`` reports them ``disabled``). Like OpenTelemetry's
  ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``; an explicit ``apply(["gaussian-topk"])`` still applies one.
  The toolchain patches an export runs inside (``status`` lists them, scope ``export``) honour both variables:
  ``GEMMA3N_EXPORT_FIXES_DISABLE=xnnpack-forms`` lowers without the XNNPACK forms, ``=validate-once,...`` without
  those shortcuts; ``GEMMA3N_EXPORT_FIXES=0`` exports on the upstream toolchain too.
"""

from __future__ import annotations

import os

ENV_VAR = "GEMMA3N_EXPORT_FIXES"
DISABLE_VAR = "GEMMA3N_EXPORT_FIXES_DISABLE"
_OFF_VALUES = frozenset({"0", "false", "no", "off", "disable", "disabled"})


def disabled_by_env() -> bool:
    """True when ``GEMMA3N_EXPORT_FIXES`` asks for this process to stay unpatched."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _OFF_VALUES


def disabled_patches() -> frozenset[str]:
    """The patch ids ``GEMMA3N_EXPORT_FIXES_DISABLE`` names (unknown ids are kept: the engine reports them)."""
    text = os.environ.get(DISABLE_VAR, "")
    return frozenset(part for part in text.replace(",", " ").split() if part)
