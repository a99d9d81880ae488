# What to add to tests/models/gemma3n/test_modeling_gemma3n.py (this file also runs on its own, unchanged):
#
# 1. Imports, into the blocks the file already has: `Gemma3nTextConfig` into `from transformers import (...)`;
#    `require_torch` and `torch_device` are already imported from `transformers.testing_utils`;
#    `from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextMLP` into `if is_torch_available():`.
#
# 2. `Gemma3nTextModelTester`: the 4-layer tester gets the default `activation_sparsity_pattern`, which is 0.0 on
#    every layer when there are <= 10 layers, so no common test ever reaches `_gaussian_topk`: the slow
#    `test_executorch_export` passes on the current code. Make the first layer sparse, as in the released
#    checkpoints (0.95 on the first 10 layers); then `test_executorch_export` fails on the current code
#    (`SpecViolationError`: `aten.erfinv` is not core ATen) and passes with the fix (checked with the exporter the
#    test uses, on this tester's config). `test_torch_export` exports non-strict, where `erfinv` is recorded without
#    an error, so it passes either way. A list, like `layer_types`: the config's type check rejects a tuple.
#
#        def __init__(
#            ...
#            num_kv_shared_layers=2,  # important to override
#   +        activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0],  # the first layer runs `_gaussian_topk`
#            layer_types=[...],
#            ...
#        ):
#            ...
#            self.num_kv_shared_layers = num_kv_shared_layers
#   +        self.activation_sparsity_pattern = activation_sparsity_pattern
#
#    (`CausalLMModelTester.get_config` passes every tester attribute named like a config argument.)
#
# 3. The test class below, after `Gemma3nTextModelTest`.
import unittest

from transformers import Gemma3nTextConfig, is_torch_available
from transformers.testing_utils import require_torch, torch_device


if is_torch_available():
    import torch

    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextMLP


@require_torch
class Gemma3nTextMLPTest(unittest.TestCase):
    def get_mlp(self, activation_sparsity=0.95):
        config = Gemma3nTextConfig(
            vocab_size=99,
            vocab_size_per_layer_input=99,
            hidden_size=16,
            hidden_size_per_layer_input=16,
            intermediate_size=21,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_kv_shared_layers=0,
            layer_types=["sliding_attention", "full_attention"],
            activation_sparsity_pattern=[activation_sparsity, 0.0],
        )
        return Gemma3nTextMLP(config, layer_idx=0).to(torch_device).eval()

    @staticmethod
    def reference_gaussian_topk(inputs, activation_sparsity):
        # `_gaussian_topk` as written before it became exportable: the float32 quantile cast to the input dtype
        target_sparsity_tensor = torch.tensor(activation_sparsity, dtype=torch.float32, device=inputs.device)
        std_multiplier = torch.distributions.normal.Normal(0, 1).icdf(target_sparsity_tensor).type(inputs.dtype)
        inputs_mean = torch.mean(inputs, dim=-1, keepdim=True)
        inputs_std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
        return torch.nn.functional.relu(inputs - (inputs_mean + inputs_std * std_multiplier))

    def test_gaussian_topk_matches_the_normal_quantile_in_every_dtype(self):
        inputs = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
        for activation_sparsity in (0.5, 0.8, 0.95, 0.99):
            mlp = self.get_mlp(activation_sparsity)
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                with self.subTest(activation_sparsity=activation_sparsity, dtype=dtype):
                    x = inputs.to(device=torch_device, dtype=dtype)
                    expected = self.reference_gaussian_topk(x, activation_sparsity)
                    torch.testing.assert_close(mlp._gaussian_topk(x), expected, rtol=0, atol=0)

    def test_gaussian_topk_keeps_the_target_fraction(self):
        mlp = self.get_mlp(0.95)
        inputs = torch.randn(4, 8, 4096, generator=torch.Generator().manual_seed(0)).to(torch_device)
        kept = (mlp._gaussian_topk(inputs) > 0).float().mean().item()
        self.assertAlmostEqual(kept, 0.05, delta=0.01)

    def test_sparse_mlp_exports_without_erfinv(self):
        # torch.distributions in forward: strict export stops in Dynamo, and non-strict export records aten.erfinv,
        # which is not in the core ATen opset (ExecuTorch's `to_edge` rejects it).
        mlp = self.get_mlp(0.95)
        inputs = (torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(0)).to(torch_device),)
        with torch.no_grad():
            expected = mlp(*inputs)
            for strict in (False, True):
                with self.subTest(strict=strict):
                    exported = torch.export.export(mlp, inputs, strict=strict)
                    targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
                    self.assertEqual([target for target in targets if "erfinv" in target], [])
                    torch.testing.assert_close(exported.module()(*inputs), expected)
