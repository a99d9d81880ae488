"""Upstream pull-request drafts, generated from the patch registry and the installed transformers source."""
