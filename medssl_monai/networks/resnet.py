"""2D ResNet frame encoders (MONAI's ``ResNet``) and the UCL frame classifier.

UCL (Basu et al., MICCAI 2022, arXiv 2207.13148) uses torchvision ResNet-50 (or 18) as the
query/key encoders and, downstream, the same ResNet with a ``2048 -> 256 -> ReLU -> Dropout(0.4) -> C`` head
(``lincls_bin.py``, ``fc_type 2``). MONAI's ``ResNet`` with ``spatial_dims=2``, a 7x7 stride-2 stem, projection
shortcuts (type ``"B"``) and bias-free downsampling has torchvision's layout; ``feed_forward=False`` makes it a
feature extractor returning ``B x 512`` (ResNet-18/34) or ``B x 2048`` (ResNet-50/101/152), times ``widen_factor``.
Nothing is downloaded at run time, so encoders start from random init unless ``pretrained_ckpt`` names a state_dict
file: a torchvision ResNet's (the reference's ImageNet initialisation, e.g. ``ResNet50_Weights.IMAGENET1K_V1``
saved by the user; the key layouts are identical), this project's ``model.pt``, or a reference
``checkpoint_*.pth.tar`` with ``module.encoder_q.`` keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["RESNET_LAYERS", "resnet_encoder", "feature_dim", "load_encoder_weights", "FrameClassifier"]

logger = logging.getLogger(__name__)

# depth -> (block, layers); the torchvision configurations
RESNET_LAYERS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


def resnet_encoder(
    depth: int = 50, in_channels: int = 3, widen_factor: float = 1.0, pretrained_ckpt: str | Path | None = None
) -> ResNet:
    """A torchvision-layout 2D ResNet feature extractor: ``B x C x H x W`` -> ``B x D`` (after global pooling).

    Args:
        depth: 18, 34, 50, 101 or 152.
        in_channels: input channels (3: grey frames replicated to RGB, as the reference loads them).
        widen_factor: channel multiplier (``< 1`` for narrow CPU variants; 1 is the paper's network).
        pretrained_ckpt: optional state_dict path loaded with :func:`load_encoder_weights`.
    """
    if depth not in RESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    block, layers = RESNET_LAYERS[depth]
    net = ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        widen_factor=widen_factor,
        feed_forward=False,
        bias_downsample=False,
    )
    if pretrained_ckpt:
        load_encoder_weights(net, pretrained_ckpt)
    return net


def feature_dim(encoder: nn.Module) -> int:
    """The output width ``D`` of a MONAI ``ResNet`` feature extractor (``in_planes`` after the last stage)."""
    if isinstance(encoder, ResNet):
        return int(encoder.in_planes)
    if hasattr(encoder, "out_features"):
        return int(encoder.out_features)
    raise TypeError(f"cannot tell the feature width of {type(encoder).__name__}; pass feature_dim explicitly")


_PREFIXES = ("module.", "encoder_q.", "encoder.", "query.0.", "model.")


def _clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:  # strip nested wrappers, e.g. "module.encoder_q." of the reference checkpoints
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        out[k] = v
    return out


def load_encoder_weights(encoder: nn.Module, ckpt: str | Path | Mapping, strict: bool = False) -> dict[str, list[str]]:
    """Load a pretrained encoder state_dict into ``encoder``; returns ``{"missing": [...], "unexpected": [...]}``.

    Accepts a plain state_dict (this project's ``model.pt``), a dict holding one under ``state_dict``/``model``
    (the reference's ``checkpoint_*.pth.tar``), and strips ``module.`` / ``encoder_q.`` / ``encoder.`` prefixes.
    Head weights (``fc.*``, the MLP projection, the key encoder) are dropped, as ``lincls_bin.py`` does; keys whose
    shapes differ are skipped and reported.

    Raises:
        ValueError: nothing in the checkpoint matches the encoder (a wrong file), or ``strict`` and keys are missing.
    """
    if not isinstance(ckpt, Mapping):
        ckpt = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            ckpt = ckpt[key]
            break
    own = encoder.state_dict()
    state = {k: v for k, v in _clean_state_dict(ckpt).items() if not k.startswith(("fc.", "encoder_k.", "key"))}
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    # BatchNorm's scalar ``num_batches_tracked`` matches any ResNet: it alone does not make the file fit
    if not any(v.ndim > 0 for v in usable.values()):
        raise ValueError("no weights of the checkpoint match the encoder (wrong file or architecture?)")
    result = encoder.load_state_dict(usable, strict=False)
    missing = list(result.missing_keys)
    unexpected = sorted(set(state) - set(usable))
    if strict and missing:
        raise ValueError(f"checkpoint lacks {len(missing)} encoder weights, e.g. {missing[:3]}")
    if missing or unexpected:  # e.g. ImageNet ResNet-50 weights into a ResNet-18 or a narrow encoder
        logger.warning(
            "partial weight load: %d encoder tensors kept their init (e.g. %s), %d checkpoint tensors unused (e.g. %s)",
            len(missing),
            missing[:3],
            len(unexpected),
            unexpected[:3],
        )
    logger.info("loaded %d encoder tensors; %d missing, %d skipped", len(usable), len(missing), len(unexpected))
    return {"missing": missing, "unexpected": unexpected}


class FrameClassifier(nn.Module):
    """A frame encoder plus UCL's classification head: ``D -> hidden -> ReLU -> Dropout -> num_classes``.

    ``lincls_bin.py`` (fc_type 2) on ResNet-50: ``2048 -> 256 -> ReLU -> Dropout(0.4) -> 3``; the whole network is
    trained there despite the script's name (``finetune="all"``). The POCUS evaluation (``eval_ucl_pocus.py``)
    trains only the parameters named ``layer4.1*`` and a new single linear fc: ``finetune="layer4.1"``,
    ``hidden_dim=0``. ``finetune="last_stage"`` trains the whole last stage (``layer4``) and the head.

    Args:
        encoder: a feature extractor ``B x C x H x W`` -> ``B x D`` (:func:`resnet_encoder`).
        num_classes: output classes.
        hidden_dim: head width (256 in the reference); 0: a single linear layer ``D -> num_classes`` (POCUS).
        dropout: dropout before the last linear layer (0.4; unused with ``hidden_dim=0``).
        finetune: ``"all"``, ``"last_stage"`` (``layer4``) or an encoder parameter-name prefix such as
            ``"layer4.1"``: only the encoder parameters whose names start with it train, and the head.
        pretrained_ckpt: optional state_dict path loaded into ``encoder`` (:func:`load_encoder_weights`).
        in_features: ``D``; ``None`` reads it from the encoder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 3,
        hidden_dim: int = 256,
        dropout: float = 0.4,
        finetune: str = "all",
        pretrained_ckpt: str | Path | None = None,
        in_features: int | None = None,
    ) -> None:
        super().__init__()
        if finetune in ("all", "last_stage"):
            prefix = "" if finetune == "all" else "layer4."
        elif finetune.startswith("layer"):
            prefix = finetune
        else:
            raise ValueError(f"finetune must be 'all', 'last_stage' or a name prefix like 'layer4.1', got {finetune!r}")
        self.encoder = encoder
        if pretrained_ckpt:
            load_encoder_weights(encoder, pretrained_ckpt)
        d = in_features or feature_dim(encoder)
        if hidden_dim:
            self.head = nn.Sequential(
                nn.Linear(d, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes)
            )
        else:
            self.head = nn.Sequential(nn.Linear(d, num_classes))
        self.finetune = finetune
        if prefix:
            # "layer4.1" must not also match "layer4.10"-style names of deeper ResNets
            stem = prefix.rstrip(".")
            trained = [n for n, _ in self.encoder.named_parameters() if n == stem or n.startswith(stem + ".")]
            if not trained:
                raise ValueError(f"no encoder parameter is named {stem!r}*")
            for name, p in self.encoder.named_parameters():
                p.requires_grad = name in trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
