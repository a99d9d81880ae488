# To add to tests/models/gemma3n/test_modeling_gemma3n.py (transformers' own test style).
import unittest

from transformers import Gemma3nTextConfig, is_torch_available
from transformers.testing_utils import require_torch

if is_torch_available():
    import torch

    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextMLP


@require_torch
class Gemma3nTextMLPGaussianTopkTest(unittest.TestCase):
    def get_mlp(self, sparsity=0.95):
        config = Gemma3nTextConfig(
            vocab_size=64,
            vocab_size_per_layer_input=64,
            hidden_size=32,
            hidden_size_per_layer_input=8,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            laurel_rank=4,
            num_kv_shared_layers=0,
            layer_types=["sliding_attention", "full_attention"],
            activation_sparsity_pattern=[sparsity, 0.0],
        )
        return Gemma3nTextMLP(config, layer_idx=0).eval()

    def test_std_multiplier_is_the_normal_quantile(self):
        mlp = self.get_mlp(0.95)
        expected = torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(0.95, dtype=torch.float64)).item()
        self.assertIsInstance(mlp.std_multiplier, float)
        self.assertAlmostEqual(mlp.std_multiplier, expected, places=12)
        self.assertEqual(self.get_mlp(0.0).std_multiplier, 0.0)

    def test_gaussian_topk_keeps_the_target_fraction(self):
        mlp = self.get_mlp(0.95)
        inputs = torch.randn(4, 8, 4096, generator=torch.Generator().manual_seed(0))
        kept = (mlp._gaussian_topk(inputs) > 0).float().mean().item()
        self.assertAlmostEqual(kept, 0.05, delta=0.01)

    def test_gaussian_topk_exports_without_erfinv(self):
        mlp = self.get_mlp(0.95)
        inputs = (torch.randn(1, 4, 32),)
        for strict in (False, True):
            with self.subTest(strict=strict):
                exported = torch.export.export(mlp, inputs, strict=strict)
                targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
                self.assertFalse([target for target in targets if "erfinv" in target])
                torch.testing.assert_close(exported.module()(*inputs), mlp(*inputs))
