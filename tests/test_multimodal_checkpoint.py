"""A multimodal ``gemma3n`` checkpoint directory (text decoder + audio and vision towers, as Google's checkpoints
ship): ``export DIR`` loads only the text decoder, exports and validates it.

The checkpoint is made here with the real classes: ``Gemma3nConfig`` with tiny text, audio and vision configs;
the tiny text decoder, transformers' own ``Gemma3nAudioEncoder`` and both ``Gemma3nMultimodalEmbedder`` s, saved
under the names ``Gemma3nForConditionalGeneration`` uses. The vision tower is a timm MobileNetV5 that needs timm,
and timm needs torchvision, which does not import beside this CPU torch: its weights are one tensor under the
tower's prefix (the loader must skip the prefix, whatever is under it).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_commands import CLI

from conftest import run_python


@pytest.fixture(scope="module")
def multimodal_checkpoint(tmp_path_factory, gemma3n_module):
    from safetensors.torch import save_file
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nVisionConfig
    from transformers.models.gemma3n import modeling_gemma3n as mg

    from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_text_config

    out = tmp_path_factory.mktemp("gemma3n-multimodal")
    audio = Gemma3nAudioConfig(
        hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=1, sscp_conv_channel_size=(8, 4),
        conf_conv_kernel_size=3, vocab_size=16, input_feat_size=16,
    )  # fmt: skip
    vision = Gemma3nVisionConfig(hidden_size=32, vocab_size=16)
    config = Gemma3nConfig(
        text_config=tiny_text_config().to_dict(), audio_config=audio.to_dict(), vision_config=vision.to_dict()
    )
    config.architectures = ["Gemma3nForConditionalGeneration"]
    config.save_pretrained(out)
    tensors = {f"model.language_model.{k}": v for k, v in build_tiny_model().model.state_dict().items()}
    torch.manual_seed(0)
    audio_tower = mg.Gemma3nAudioEncoder(config.audio_config)
    tensors |= {f"model.audio_tower.{k}": v for k, v in audio_tower.state_dict().items()}
    for name, sub in (("embed_audio", config.audio_config), ("embed_vision", config.vision_config)):
        embedder = mg.Gemma3nMultimodalEmbedder(sub, config.text_config)
        tensors |= {f"model.{name}.{k}": v for k, v in embedder.state_dict().items()}
    tensors["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.randn(32, 3, 3, 3)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_only_the_text_decoder_is_loaded_with_its_real_weights(multimodal_checkpoint):
    from gemma3n_export_fixes.models.sources import checkpoint_model_type, load_model
    from gemma3n_export_fixes.models.tiny import build_tiny_model, tiny_input_ids

    assert checkpoint_model_type(multimodal_checkpoint) == "gemma3n"
    loaded = load_model(str(multimodal_checkpoint))
    names = [name for name, _ in loaded.model.named_modules()]
    assert not [n for n in names if "audio" in n or "vision" in n]  # no tower was ever built
    ids = tiny_input_ids(16)
    with torch.no_grad():  # the text weights came from the file, not from random init
        assert torch.equal(loaded.model(ids).logits, build_tiny_model()(ids).logits)


@pytest.mark.slow
def test_export_of_a_multimodal_checkpoint_directory_validates(multimodal_checkpoint, tmp_path):
    out = tmp_path / "mm.pte"
    result = run_python([*CLI, "export", "--model", str(multimodal_checkpoint), "--fixed-window", "--recipe",
                         "portable", "--qembedding", "none", "--out", str(out)])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    checked = run_python([*CLI, "validate", str(out), "--json"])
    assert checked.returncode == 0, checked.stdout + checked.stderr[-2000:]
    record = json.loads(checked.stdout)
    assert record["ok"] and record["max_abs_diff"] < 1e-4 and record["top1_agreement"] == 1.0
