"""The modules the import-scope patches target (stdlib only: the start-up hook and every patch read these)."""

from __future__ import annotations

#: The module the model patches target (Gemma 3n's modelling code).
TARGET_MODULE = "transformers.models.gemma3n.modeling_gemma3n"
#: The module the recipe patches target (transformers' ExecuTorch recipe: what optimum-cli and ``--kv-cache`` use).
RECIPE_MODULE = "transformers.integrations.executorch"
#: The optimum-executorch module the client patch targets (``optimum-cli export executorch --use_custom_sdpa``).
OPTIMUM_SDPA_MODULE = "optimum.executorch.attentions.custom_sdpa"
#: The optimum-executorch module of ``--use_custom_kv_cache`` (does not import on transformers without HybridCache).
OPTIMUM_KV_CACHE_MODULE = "optimum.executorch.attentions.custom_kv_cache"
#: Every module a patch targets; the post-import hook watches each (a patch applies when its module is imported).
WATCHED_MODULES = (TARGET_MODULE, RECIPE_MODULE, OPTIMUM_SDPA_MODULE, OPTIMUM_KV_CACHE_MODULE)
