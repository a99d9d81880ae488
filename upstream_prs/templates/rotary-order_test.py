# What to add to tests/models/gemma3n/test_modeling_gemma3n.py (this file also runs on its own, unchanged):
#
# 1. Imports, into the blocks the file already has: `from unittest import mock`; `Gemma3nTextConfig` into
#    `from transformers import (...)`; `require_torch` and `torch_device` are already imported from
#    `transformers.testing_utils`; `from transformers.models.gemma3n import modeling_gemma3n` and
#    `from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel` into `if is_torch_available():`.
#
# 2. `_SetInOtherOrder` and the test class below, after `Gemma3nTextModelTest`. A set of strings iterates in the
#    order of the process's hash seed, which one process cannot change: the test gives the module a `set` that
#    iterates in the reverse order (what another seed gives for two layer types), so it fails on the current code
#    whatever PYTHONHASHSEED the test process has, and passes with the fix.
import unittest
from unittest import mock

from transformers import Gemma3nTextConfig, is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch

    from transformers.models.gemma3n import modeling_gemma3n
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextModel


class _SetInOtherOrder(set):
    # a set iterating in the reverse of the order this process's sets of the same strings iterate in
    def __iter__(self):
        return reversed(list(super().__iter__()))


@require_torch
class Gemma3nTextModelRotaryOrderTest(unittest.TestCase):
    def get_model(self):
        config = Gemma3nTextConfig(
            vocab_size=99,
            vocab_size_per_layer_input=99,
            hidden_size=16,
            hidden_size_per_layer_input=16,
            intermediate_size=21,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            num_kv_shared_layers=0,
            layer_types=["sliding_attention", "full_attention"],
        )
        torch.manual_seed(0)
        return Gemma3nTextModel(config).to(torch_device).eval()

    @staticmethod
    def trace(model):
        # the order of the rotary embedding calls, and the graph torch.export records
        order = []

        def record(module, args, kwargs):
            order.append(args[2] if len(args) > 2 else kwargs["layer_type"])

        hook = model.rotary_emb.register_forward_pre_hook(record, with_kwargs=True)
        try:
            input_ids = torch.tensor([[3, 4, 5, 6]], device=torch_device)
            with torch.no_grad():
                exported = torch.export.export(model, (input_ids,), {"use_cache": False}, strict=False)
        finally:
            hook.remove()
        return order, exported.graph_module.code

    def test_rotary_embeddings_do_not_follow_the_hash_seed(self):
        model = self.get_model()
        order, graph = self.trace(model)
        with mock.patch.object(modeling_gemma3n, "set", _SetInOtherOrder, create=True):
            other_order, other_graph = self.trace(model)
        self.assertEqual(order, other_order)
        self.assertEqual(graph, other_graph)
        self.assertEqual(order, sorted(set(model.config.layer_types)))
