"""Interpreter-start trigger: the only code that runs in every Python process.

Contract:
- stdlib only; imports neither torch, transformers nor wrapt (and not the rest of this package);
- prints nothing and never raises;
- idempotent: a venv processes ``.pth`` files twice per start (CPython issue 75723), and PEP 829
  ``.start`` files may call :func:`install` again.

What it does: unless ``GEMMA3N_EXPORT_FIXES`` turns it off (:mod:`gemma3n_export_fixes._env`), it puts
one tiny finder at the front of ``sys.meta_path``. The finder answers ``None`` for every import (so it
never changes what gets imported) and, the first time ``transformers`` is imported, hands over to
:mod:`gemma3n_export_fixes.plugin.hook`, which registers a wrapt post-import hook for Gemma 3n's modelling
module. The finder then stays, inert: removing it from inside ``find_spec`` would mutate the
``sys.meta_path`` list the import system is iterating. Every import pays one string comparison.
"""

from __future__ import annotations

import sys

from gemma3n_export_fixes._env import disabled_by_env

TRIGGER = "transformers"


class _TransformersTrigger:
    """A meta-path finder that never finds anything; it only notices ``import transformers``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == TRIGGER:
            _hand_over()
        return None

    def invalidate_caches(self) -> None:
        pass


_armed = False  # install() ran (once per process)


def _hand_over() -> None:
    """Leave the start-up path: register the real post-import hook (imports wrapt lazily)."""
    try:
        from gemma3n_export_fixes.plugin import hook

        hook.register()
    except Exception:
        pass


def install() -> None:
    """Arm the trigger for this process. Safe to call any number of times; never raises."""
    global _armed
    try:
        if _armed or disabled_by_env():
            return
        _armed = True
        if TRIGGER in sys.modules:  # transformers already imported: hand over at once
            _hand_over()
        else:
            sys.meta_path.insert(0, _TransformersTrigger())
    except Exception:
        pass
