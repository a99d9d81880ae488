"""The toolchain's patches (ExecuTorch, torch): export scope, in place only while ``export`` traces and lowers.

One module per patch, each defining ``PATCH``; the registry (:mod:`gemma3n_export_fixes.plugin.patches`) lists
them. Their modules import nothing of ExecuTorch or torch at import time (the plugin loads them when transformers
is imported); ``build`` imports what it needs.
"""
