"""``generate``: greedy decoding from a KV-cache ``.pte`` in the ExecuTorch runtime.

Token ids in, token ids out; text in and out when a local tokenizer is known (``--tokenizer DIR``, or the
checkpoint directory named in the program's export record when it holds tokenizer files). Nothing is
downloaded: tokenizers load with ``local_files_only``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gemma3n_export_fixes.errors import UserError, require

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def parse_ids(text: str) -> list[int]:
    """``"2, 651 3124"`` -> ``[2, 651, 3124]``; ``UserError`` on anything else."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(f"--ids must be non-negative integers separated by commas or spaces, got {text!r}")
    return [int(p) for p in parts]


def find_tokenizer_dir(explicit: str | None, record: dict[str, Any]) -> Path | None:
    """The tokenizer directory to use: ``explicit``, else the recorded checkpoint dir if it has tokenizer files."""
    if explicit:
        directory = Path(explicit)
        if not directory.is_dir() or not any((directory / f).is_file() for f in TOKENIZER_FILES):
            raise UserError(f"--tokenizer {explicit}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) there")
        return directory
    model = record.get("model")
    if model and Path(model).is_dir() and any((Path(model) / f).is_file() for f in TOKENIZER_FILES):
        return Path(model)
    return None


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{directory}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None


def generate_from_pte(
    pte: Path, ids: str | None = None, prompt: str | None = None, tokenizer: str | None = None,
    max_new_tokens: int = 32, threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Greedy decoding from a KV-cache program; returns the record the CLI prints."""
    require("executorch", "generate", "executorch")
    from gemma3n_export_fixes.pte import VOCAB_SIZE_METHOD, read_sidecar
    from gemma3n_export_fixes.runtime.decoding import program_eos_ids, runtime_decoder
    from gemma3n_export_fixes.runtime.loading import is_kv_program, load_program, set_threads

    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    prompt_ids = parse_ids(ids) if ids is not None else None
    pool = set_threads(threads)
    program = load_program(pte)
    if not is_kv_program(program):
        raise UserError(
            f"{pte}: a fixed-window program; `generate` needs a KV-cache program (export without --fixed-window)"
        )
    record = read_sidecar(pte) or {}
    tok_dir = find_tokenizer_dir(tokenizer, record)
    tok = load_tokenizer(tok_dir) if tok_dir else None
    if prompt_ids is None:
        if tok is None:
            raise UserError("--prompt needs a tokenizer: pass --tokenizer DIR, or give token ids with --ids")
        prompt_ids = tok(prompt)["input_ids"]
    vocab = int(program.load_method(VOCAB_SIZE_METHOD).execute([])[0])
    if bad := [t for t in prompt_ids if t >= vocab]:
        raise UserError(f"token ids {bad[:5]} are outside the program's vocabulary of {vocab}")
    decoder = runtime_decoder(program)
    if len(prompt_ids) + max_new_tokens > decoder.max_seq_len:
        raise UserError(
            f"prompt ({len(prompt_ids)} tokens) + --max-new-tokens {max_new_tokens} exceed the program's cache of "
            f"{decoder.max_seq_len} positions (export with a larger --max-seq-len)"
        )
    eos = program_eos_ids(program)  # the same stop ids as ExecuTorch's LLM runner, and the tokenizer's
    if tok is not None and tok.eos_token_id is not None:
        eos |= {tok.eos_token_id} if isinstance(tok.eos_token_id, int) else set(tok.eos_token_id)
    result = decoder.greedy(prompt_ids, max_new_tokens, eos=eos)
    per_token = result.decode_ms_per_token
    return {
        "pte": str(pte),
        "prompt_ids": prompt_ids,
        "new_ids": result.tokens,
        "text": tok.decode(result.tokens, skip_special_tokens=True) if tok is not None else None,
        "tokenizer": str(tok_dir) if tok_dir else None,
        "prefill_ms": round(result.prefill_ms, 3),
        "decode_ms_per_token": None if per_token is None else round(per_token, 3),
        "decode_steps": len(result.decode_ms),
        "threads": pool,
        "eos_ids": sorted(eos),
        "stopped_at_eos": bool(result.tokens) and result.tokens[-1] in eos,
    }
