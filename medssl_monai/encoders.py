"""One encoder interface: any pretrained encoder as ``B x C x T x H x W -> B x D``.

:func:`build_encoder` builds, from a pretraining bundle's configs (its ``network_def``) and optionally its
``models/model.pt``, a :class:`ClipEncoder` that

- takes clips on the 8-bit scale (``uint8``, or float in ``[0, 255]``) with 1 or 3 channels and normalises them
  itself, with the statistics the bundle trains with (UniLVSeg / DISCOVR / VideoMAE: EchoNet mean/std as
  SimLVSeg's ``ClipPrepareBatch``; TVRL: ``[0, 1]`` only, as its reference; UCL: ImageNet statistics);
- converts channels (grey encoders average RGB, which is exact for echo videos stored as grey RGB; RGB encoders
  repeat a grey channel, as the UCL/DISCOVR readers do) and resizes frames to the bundle's ``spatial_size``;
- picks ``num_frames`` evenly spaced frames where the architecture fixes the clip length (UniLVSeg's 3D UNet,
  DISCOVR's tubelet ViT; TVRL only above its ``max_frames``);
- returns the clip embedding ``B x embedding_dim``:

  ========== =================================================================================
  kind       embedding
  ========== =================================================================================
  unilvseg   global average pool of the 3D UNet bottleneck (:meth:`UniLVSegUNet.embed`)
  tvrl       the temporal CLS of the spatio-temporal ViT (any of the six TVRL frameworks)
  ucl        the ResNet image encoder on every frame, mean-pooled over time (masked frames left out)
  discovr    the CLS token of DISCOVR's EMA video teacher
  videomae   the CLS token of the VideoMAE baseline encoder (same ViT, ``configs/videomae.yaml``)
  ========== =================================================================================

``checkpoint=None`` gives the randomly initialised encoder of the same architecture (the benchmark's baseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from medssl_monai.transforms.intensity import ECHONET_MEAN, ECHONET_STD

__all__ = [
    "ENCODER_KINDS",
    "ENCODER_BUNDLES",
    "ClipEncoder",
    "load_backbone_weights",
    "encoder_config",
    "build_encoder",
    "wrap_backbone",
]

#: encoder kind -> (pretraining bundle, extra config merged after train.yaml [+ small.yaml])
ENCODER_BUNDLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "unilvseg": ("unilvseg_echo_ssl_pretraining", ()),
    "tvrl": ("tvrl_echo_ssl_pretraining", ()),
    "ucl": ("ucl_us_ssl_pretraining", ()),
    "discovr": ("discovr_echo_ssl_pretraining", ()),
    "videomae": ("discovr_echo_ssl_pretraining", ("videomae.yaml",)),
}
ENCODER_KINDS = tuple(ENCODER_BUNDLES)

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_ZERO_ONE = ((0.0,), (1.0,))
_NORMALISATION = {
    "unilvseg": (ECHONET_MEAN, ECHONET_STD),
    "tvrl": _ZERO_ONE,
    "ucl": _IMAGENET,
    "discovr": (ECHONET_MEAN, ECHONET_STD),
    "videomae": (ECHONET_MEAN, ECHONET_STD),
}
# the config key holding each kind's clip length, and whether the architecture needs exactly that many frames
_FRAMES = {
    "unilvseg": ("num_frames", True),
    "tvrl": ("num_frames", False),
    "ucl": (None, False),
    "discovr": ("num_frames", True),
    "videomae": ("num_frames", True),
}


def _bundles_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "bundles"


class ClipEncoder(nn.Module):
    """A frozen-feature view of one pretrained network: 8-bit clips ``B x C x T x H x W`` -> ``B x embedding_dim``.

    Args:
        backbone: the bundle's ``network_def`` (weights loaded).
        kind: one of :data:`ENCODER_KINDS` (selects the embedding, see the module docstring).
        in_channels: channels the backbone takes (1 or 3).
        mean, std: the bundle's normalisation on the ``[0, 1]`` scale (one value or one per channel).
        spatial_size: frame size the backbone was trained on (``None``: keep the input size).
        num_frames: clip length the backbone was trained on (``None``: any).
        fixed_frames: the backbone needs exactly ``num_frames`` frames (otherwise at most ``num_frames``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        kind: str,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        spatial_size: int | None = None,
        num_frames: int | None = None,
        fixed_frames: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ENCODER_KINDS:
            raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {kind!r}")
        self.backbone, self.kind, self.in_channels = backbone, kind, int(in_channels)
        self.spatial_size, self.num_frames, self.fixed_frames = spatial_size, num_frames, fixed_frames
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        c = self.in_channels
        self.register_buffer("mean", mean_t.expand(c).reshape(1, c, 1, 1, 1).clone(), persistent=False)
        self.register_buffer("std", std_t.expand(c).reshape(1, c, 1, 1, 1).clone(), persistent=False)
        self.embedding_dim = self._infer_dim()

    def _infer_dim(self) -> int:
        b = self.backbone
        if self.kind == "unilvseg":
            return int(b.embedding_dim)
        if self.kind == "tvrl":
            return int(b.out_features)
        if self.kind == "ucl":
            from medssl_monai.networks.resnet import feature_dim

            return feature_dim(b)
        return int(b.hidden_size)

    def frame_indices(self, length: int) -> torch.Tensor | None:
        """Evenly spaced frame indices when the clip length must change (``None``: keep all frames)."""
        if self.num_frames is None or length == self.num_frames or (not self.fixed_frames and length < self.num_frames):
            return None
        return torch.linspace(0, length - 1, self.num_frames).round().long()

    def preprocess(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Channels, clip length, frame size and normalisation: 8-bit ``B x C x T x H x W`` -> the backbone's input.

        Returns the clip and the kept frame indices (``None``: all).
        """
        if x.ndim != 5:
            raise ValueError(f"expected B x C x T x H x W, got shape {tuple(x.shape)}")
        x = x.float()
        c = x.shape[1]
        if c != self.in_channels:
            if self.in_channels == 1:
                x = x.mean(dim=1, keepdim=True)  # grey encoders: echo RGB is grey replicated
            elif c == 1:
                x = x.expand(-1, self.in_channels, -1, -1, -1)
            else:
                raise ValueError(f"cannot map {c} input channels to the encoder's {self.in_channels}")
        idx = self.frame_indices(x.shape[2])
        if idx is not None:
            x = x.index_select(2, idx.to(x.device))
        b, c, t, h, w = x.shape
        if self.spatial_size is not None and (h, w) != (self.spatial_size, self.spatial_size):
            frames = x.transpose(1, 2).reshape(b * t, c, h, w)
            frames = F.interpolate(frames, size=(self.spatial_size,) * 2, mode="bilinear", antialias=True)
            x = frames.reshape(b, t, c, self.spatial_size, self.spatial_size).transpose(1, 2)
        return (x / 255.0 - self.mean) / self.std, idx

    def forward(
        self, x: torch.Tensor, times: torch.Tensor | None = None, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``B x C x T x H x W`` 8-bit clips (+ ``B x T`` visit times and valid-frame mask for TVRL) -> ``B x D``."""
        x, idx = self.preprocess(x)
        if idx is not None:
            times = None if times is None else times.index_select(1, idx.to(times.device))
            frame_mask = None if frame_mask is None else frame_mask.index_select(1, idx.to(frame_mask.device))
        if self.kind == "unilvseg":
            return self.backbone.embed(x)
        if self.kind == "tvrl":
            return self.backbone(x, times, frame_mask)
        if self.kind == "ucl":
            b, c, t, h, w = x.shape
            feats = self.backbone(x.transpose(1, 2).reshape(b * t, c, h, w)).reshape(b, t, -1)
            if frame_mask is None:
                return feats.mean(dim=1)
            m = frame_mask.to(feats.dtype).unsqueeze(-1)
            return (feats * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return self.backbone(x)  # DISCOVR / VideoMAE: the CLS token


def load_backbone_weights(backbone: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Strictly load a plain ``network_def`` state_dict, a resumable ``{"model": ...}`` checkpoint, or a method
    state_dict whose encoder keys start with ``encoder.`` (files read with ``weights_only=True``).

    The keys are tried as they are first: UniLVSeg's UNet has its own ``encoder.`` submodule, so the prefix is
    stripped only when the plain keys do not fit (``probe.load_encoder_weights`` strips it unconditionally).
    """
    from medssl_monai.bundle_tools import load_state_dict

    state = dict(checkpoint) if isinstance(checkpoint, Mapping) else load_state_dict(checkpoint)
    if "model" in state and isinstance(state["model"], Mapping):
        state = dict(state["model"])
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError:
        if not any(k.startswith("encoder.") for k in state):
            raise
        backbone.load_state_dict({k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")})


def encoder_config(
    kind: str,
    bundle_dir: str | Path | None = None,
    configs: Sequence[str] = ("train.yaml",),
    **config: Any,
):
    """The ``monai.bundle.ConfigParser`` of ``kind``'s pretraining bundle (``configs`` + the kind's own extra
    config, then ``config`` overrides such as ``hidden_size=32``)."""
    from monai.bundle import ConfigParser

    if kind not in ENCODER_KINDS:
        raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {kind!r}")
    name, extra = ENCODER_BUNDLES[kind]
    root = Path(bundle_dir) if bundle_dir is not None else _bundles_dir() / name
    files = [str(root / "configs" / c) for c in (*configs, *extra)]
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(root)
    for k, v in config.items():
        parser[k] = v
    if kind == "ucl":
        parser["pretrained_ckpt"] = None  # weights come from ``checkpoint`` below, never from the config
    return parser


def build_encoder(
    kind: str,
    checkpoint: str | Path | Mapping[str, torch.Tensor] | None = None,
    bundle_dir: str | Path | None = None,
    configs: Sequence[str] = ("train.yaml",),
    seed: int | None = None,
    **config: Any,
) -> ClipEncoder:
    """Build ``kind``'s encoder from its pretraining bundle's ``network_def`` and load ``checkpoint``.

    Args:
        kind: one of :data:`ENCODER_KINDS`.
        checkpoint: ``models/model.pt`` of the bundle (a plain state_dict; resumable ``{"model": ...}`` and
            ``encoder.``-prefixed method state_dicts are accepted), a state_dict, a bundle folder (its configs and
            ``models/model.pt`` are used), or ``None`` for random init. Loaded with ``weights_only=True``, strict.
        bundle_dir: the bundle whose configs define the architecture (default: the library's bundle of ``kind``).
        configs: config files of that bundle merged in order (``("train.yaml", "small.yaml")`` for the small
            CPU settings); the kind's extra file (``videomae.yaml``) is appended.
        seed: ``torch.manual_seed`` before building (reproducible random init).
        config: overrides of config ids (``hidden_size=32``, ``spatial_size=16``, ...).

    Returns:
        A :class:`ClipEncoder` in eval mode with ``.embedding_dim``.
    """
    if isinstance(checkpoint, (str, Path)) and Path(checkpoint).is_dir():
        bundle_dir = bundle_dir or checkpoint
        checkpoint = Path(checkpoint) / "models" / "model.pt"
    parser = encoder_config(kind, bundle_dir, configs, **config)
    if seed is not None:
        torch.manual_seed(seed)
    backbone = parser.get_parsed_content("network_def", instantiate=True)
    if checkpoint is not None:
        load_backbone_weights(backbone, checkpoint)
    in_channels = int(parser.get_parsed_content("network_def#in_channels"))
    spatial = parser.get("spatial_size")
    spatial_size = int(parser.get_parsed_content("spatial_size")) if spatial is not None else None
    frames_key, fixed = _FRAMES[kind]
    num_frames = int(parser.get_parsed_content(frames_key)) if frames_key else None
    mean, std = _NORMALISATION[kind]
    return ClipEncoder(backbone, kind, in_channels, mean, std, spatial_size, num_frames, fixed).eval()


def wrap_backbone(
    kind: str,
    backbone: nn.Module,
    in_channels: int,
    spatial_size: int | None = None,
    num_frames: int | None = None,
) -> ClipEncoder:
    """A :class:`ClipEncoder` around a live ``network_def`` (shared weights, nothing copied or loaded).

    Lets a training bundle embed clips with the same interface as :func:`build_encoder` while it trains, e.g. for
    :class:`~medssl_monai.engines.embeddings.TensorBoardEmbeddingHandler`. The normalisation and whether the clip
    length is fixed come from ``kind``; the mode of ``backbone`` (train/eval) is left as it is.

    Args:
        kind: one of :data:`ENCODER_KINDS`.
        backbone: the bundle's ``network_def`` (for DISCOVR pass ``method.video_teacher``, the feature extractor).
        in_channels: channels the backbone takes.
        spatial_size: frame size the backbone trains on (``None``: any).
        num_frames: clip length the backbone trains on (``None``: any; UCL's image encoder).
    """
    if kind not in ENCODER_KINDS:
        raise ValueError(f"kind must be one of {ENCODER_KINDS}, got {kind!r}")
    mean, std = _NORMALISATION[kind]
    fixed = _FRAMES[kind][1] and num_frames is not None
    return ClipEncoder(backbone, kind, in_channels, mean, std, spatial_size, num_frames, fixed)
