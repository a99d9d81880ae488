"""Greedy decoding over a KV-cache program: ``forward(input_ids [1, T], cache_position [T]) -> logits``.

Our programs take up to the whole cache per call; optimum-cli's take one token per call (static ``[1, 1]``):
such a program is prefilled token by token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gemma3n_export_fixes.errors import UserError
from gemma3n_export_fixes.pte import EOS_IDS_METHOD, FORWARD_METHOD, MAX_SEQ_LEN_METHOD
from gemma3n_export_fixes.runtime.loading import runtime_errors

if TYPE_CHECKING:
    import torch


@dataclass
class Greedy:
    """A greedy continuation and its timing: the prefill (one call over the prompt) and each decode step."""

    tokens: list[int]
    prefill_ms: float
    decode_ms: list[float]

    @property
    def decode_ms_per_token(self) -> float | None:
        return sum(self.decode_ms) / len(self.decode_ms) if self.decode_ms else None


@dataclass
class Decoder:
    """Greedy decoding over a KV-cache ``forward(input_ids, cache_position) -> logits``.

    ``run`` is the program's forward (runtime method or exported module) taking ``[ids, positions]``;
    ``tokens_per_call`` is the most tokens one call takes (1 for a static single-token program).
    """

    run: Callable[[Any, Any], Any]
    max_seq_len: int
    tokens_per_call: int | None = None

    def _call(self, ids: list[int], start: int) -> torch.Tensor:
        import torch

        if start + len(ids) > self.max_seq_len:
            raise UserError(f"{start + len(ids)} tokens do not fit the program's cache of {self.max_seq_len}")
        step = self.tokens_per_call or len(ids)
        with runtime_errors():
            for at in range(0, len(ids), step):
                tokens = torch.tensor([ids[at : at + step]], dtype=torch.long)
                positions = torch.arange(start + at, start + at + tokens.shape[1], dtype=torch.long)
                logits = self.run(tokens, positions)
        return logits[0, -1].float()

    def teacher_forced(self, prompt: list[int], continuation: list[int]) -> list[torch.Tensor]:
        """Next-token logits after the prompt and after each token of ``continuation`` (the last one excluded)."""
        steps = [self._call(prompt, 0)]
        for i, token in enumerate(continuation[:-1]):
            steps.append(self._call([token], len(prompt) + i))
        return steps

    def greedy(self, prompt: list[int], new_tokens: int, eos: set[int] | None = None) -> Greedy:
        """Greedy continuation of ``prompt`` (stops early on a token in ``eos``), timed per call."""
        if not prompt:
            raise UserError("the prompt needs at least one token")
        start = time.perf_counter()
        logits = self._call(prompt, 0)
        result = Greedy([], (time.perf_counter() - start) * 1000, [])
        while len(result.tokens) < new_tokens:
            token = int(logits.argmax())
            result.tokens.append(token)
            if (eos and token in eos) or len(result.tokens) == new_tokens:
                break
            start = time.perf_counter()
            logits = self._call([token], len(prompt) + len(result.tokens) - 1)
            result.decode_ms.append((time.perf_counter() - start) * 1000)
        return result


def program_eos_ids(program: Any) -> set[int]:
    """The program's ``get_eos_ids`` (what ExecuTorch's LLM runner stops at); empty for older programs."""
    if EOS_IDS_METHOD not in program.method_names:
        return set()
    with runtime_errors(f"the program's {EOS_IDS_METHOD} method cannot be run"):
        return {int(i) for i in program.load_method(EOS_IDS_METHOD).execute([])}


def runtime_decoder(program: Any) -> Decoder:
    """A :class:`Decoder` over a loaded ExecuTorch KV-cache program (``Runtime.load_program``)."""
    with runtime_errors("the program's KV-cache methods cannot be loaded"):
        method = program.load_method(FORWARD_METHOD)
        max_seq_len = int(program.load_method(MAX_SEQ_LEN_METHOD).execute([])[0])
        # the largest input_ids the method accepts (its upper bound when the shape is dynamic)
        tokens_per_call = int(method.metadata.input_tensor_meta(0).sizes()[-1])
    return Decoder(
        run=lambda ids, pos: method.execute([ids, pos])[0], max_seq_len=max_seq_len, tokens_per_call=tokens_per_call
    )
