"""Any timm backbone at any input size: ViT-style models are built for model.image_size, and
checkpoints saved at another size load (random weights, no network)."""

import pytest
import torch
from safetensors.torch import save_file

from aas_ray.config import ModelConfig
from aas_ray.models import ModelError, build_model
from aas_ray.models.backbone import create_backbone


@pytest.mark.parametrize("arch, size, saved_at, resampled", [
    # DINOv2's default is 518 px: a 224-px checkpoint and a non-square 112 x 84 input
    ("vit_small_patch14_dinov2", (112, 84), (224, 224), "pos_embed"),
    # MegaDescriptor's family: 160 px leaves the last stage a 5 x 5 window instead of 7 x 7
    ("swin_tiny_patch4_window7_224", (160, 160), (224, 224), "layers.3.blocks.0.attn.relative_position_bias_table"),
])
def test_vit_and_swin_at_a_non_default_size(tmp_path, arch, size, saved_at, resampled):
    model = build_model(ModelConfig(arch=arch, image_size=size)).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, model.feat_dim)
    assert torch.allclose(y.norm(dim=1), torch.ones(2), atol=1e-5)

    other = create_backbone(arch, saved_at, pretrained=False)
    assert other.state_dict()[resampled].shape != model.backbone.state_dict()[resampled].shape
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    loaded = build_model(ModelConfig(arch=arch, image_size=size, weights=str(tmp_path / "other.safetensors"))).eval()
    # the checkpoint's weights, with the size-dependent tables resampled to this size
    assert torch.equal(loaded.backbone.patch_embed.proj.weight, other.patch_embed.proj.weight)
    assert loaded.backbone.state_dict()[resampled].shape == model.backbone.state_dict()[resampled].shape
    with torch.no_grad():
        assert loaded(torch.randn(3, 3, *size)).shape == (3, model.feat_dim)


def test_cnn_takes_no_size_and_a_checkpoint_of_another_model_is_named(tmp_path):
    model = build_model(ModelConfig(arch="resnet18", image_size=(72, 56))).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 72, 56)).shape == (1, 512)
    wide = create_backbone("resnet34", (64, 64), pretrained=False)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(tmp_path / "r34.safetensors"))
    with pytest.raises(ModelError, match="do not match 'resnet18'"):
        build_model(ModelConfig(arch="resnet18", weights=str(tmp_path / "r34.safetensors")))
    vit = create_backbone("vit_tiny_patch16_224", (64, 64), pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    with pytest.raises(ModelError, match=r"weights .*vit.safetensors do not fit 'deit_small_patch16_224'"):
        build_model(ModelConfig(arch="deit_small_patch16_224", image_size=(64, 64),
                                weights=str(tmp_path / "vit.safetensors")))
