"""The NUDF network: a CT crop in, an unsigned distance (mm) to the LAA surface out, for any query point.

IF-Net/NDF family (docs/method.md): a 3D CNN encoder builds a pyramid of feature grids from the crop; for
each query point (normalised crop coordinates, ``grid_sample`` order) the input and every level are
sampled trilinearly at the point and at 6 copies displaced by ±δ along each axis, concatenated (plus the
point's xyz) and decoded pointwise into a distance. GroupNorm replaces the paper's BatchNorm because
batch-1 BatchNorm made training unstable (docs/method.md).

The decoder's *raw* output is unbounded (as NUDF, not NDF): training uses it with a truncated L1 loss so
no point ever gets a dead gradient; :meth:`NUDFNet.decode` clamps it to [0, truncation_mm].

A checkpoint is one file: the weights plus a JSON-able config (architecture, crop size/grid, HU window,
truncation, engine version, training description), readable with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import __version__
from .crop import HUWindow
from .errors import CheckpointError, InputError
from .io import atomic_output

#: Bumped when the checkpoint layout or the meaning of a config field changes incompatibly.
CHECKPOINT_FORMAT = 1
ARCHITECTURE = "nudf-ifnet"


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network *and* the crop it expects (saved in checkpoints)."""

    architecture: str = ARCHITECTURE
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128])
    decoder: list[int] = field(default_factory=lambda: [256, 256, 256])
    displacement_mm: float = 1.26  # the paper's 0.0361 normalised units on a 70 mm crop
    use_xyz: bool = True
    norm: str = "group"  # "group" | "instance" | "batch" | "none"
    truncation_mm: float = 5.0
    crop_size_mm: float = 70.0
    crop_n: int = 128
    hu_window: list[float] = field(default_factory=lambda: HUWindow().as_list())

    def __post_init__(self) -> None:
        if self.architecture != ARCHITECTURE:
            raise InputError(f"Unknown architecture {self.architecture!r} (this engine has {ARCHITECTURE!r}).")
        self.channels = [int(c) for c in self.channels]
        self.decoder = [int(c) for c in self.decoder]
        if not self.channels or min(self.channels) < 1:
            raise InputError(f"channels must be a non-empty list of positive ints; got {self.channels}.")
        if min(self.decoder, default=1) < 1:
            raise InputError(f"decoder widths must be positive; got {self.decoder}.")
        if self.norm not in ("group", "instance", "batch", "none"):
            raise InputError(f"norm must be group, instance, batch or none; got {self.norm!r}.")
        if not self.truncation_mm > 0 or not self.crop_size_mm > 0 or not self.displacement_mm >= 0:
            raise InputError("truncation_mm and crop_size_mm must be > 0, displacement_mm ≥ 0.")
        self.crop_n = int(self.crop_n)
        min_n = 2 ** (len(self.channels) - 1) * 2
        if self.crop_n < min_n:
            raise InputError(f"crop_n={self.crop_n} is too small for {len(self.channels)} levels (≥ {min_n}).")
        self.hu_window = HUWindow.from_value(self.hu_window).as_list()

    @property
    def displacement_norm(self) -> float:
        """δ in normalised crop units."""
        return self.displacement_mm / (0.5 * self.crop_size_mm)

    @property
    def feature_size(self) -> int:
        return (1 + sum(self.channels)) * 7 + (3 if self.use_xyz else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Unknown model config fields: {', '.join(unknown)}.")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """``paper``: the authors' 128³ sizes; ``small``: the CPU-trainable default (64³, narrow decoder)."""
        if name == "paper":
            base: dict[str, Any] = {}
        elif name == "small":
            base = {"channels": [16, 32, 64, 64], "decoder": [128, 128], "crop_n": 64}
        elif name == "tiny":  # tests and smoke runs only
            base = {"channels": [8, 16, 16], "decoder": [64, 64], "crop_n": 32}
        else:
            raise InputError(f"Unknown model preset {name!r}: use 'small' or 'paper'.")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


def _conv_block(cin: int, cout: int, norm: str) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=True)]


class NUDFNet(nn.Module):
    """Encoder (feature pyramid) + pointwise decoder; see the module docstring."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        levels: list[nn.Module] = [nn.Sequential(*_conv_block(1, c.channels[0], c.norm))]
        for cin, cout in zip(c.channels[:-1], c.channels[1:]):
            levels.append(nn.Sequential(nn.MaxPool3d(2), *_conv_block(cin, cout, c.norm),
                                        *_conv_block(cout, cout, c.norm)))
        self.levels = nn.ModuleList(levels)
        widths = [c.feature_size, *c.decoder]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv1d(a, b, 1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv1d(widths[-1], 1, 1))
        self.decoder = nn.Sequential(*layers)
        d = c.displacement_norm
        offsets = torch.zeros(7, 3)
        for axis in range(3):
            offsets[1 + 2 * axis, axis] = d
            offsets[2 + 2 * axis, axis] = -d
        self.register_buffer("offsets", offsets, persistent=False)

    # -- encoder / decoder -----------------------------------------------------------------------
    def encode(self, crop: torch.Tensor) -> list[torch.Tensor]:
        """Crop ``[B, 1, D, H, W]`` (normalised HU) → [input, level 0, level 1, ...] feature grids."""
        if crop.dim() != 5 or crop.shape[1] != 1:
            raise InputError(f"encode expects a crop of shape [B, 1, D, H, W]; got {tuple(crop.shape)}.")
        feats = [crop]
        x = crop
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats

    def _features_at(self, features: list[torch.Tensor], points_norm: torch.Tensor) -> torch.Tensor:
        b, n, _ = points_norm.shape
        grid = (points_norm.unsqueeze(1) + self.offsets.view(1, 7, 1, 3)).unsqueeze(1)  # [B,1,7,N,3]
        parts = []
        for f in features:
            s = F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True)
            parts.append(s.reshape(b, f.shape[1] * 7, n))
        if self.config.use_xyz:
            parts.append(points_norm.transpose(1, 2))
        return torch.cat(parts, dim=1)

    def decode_raw(self, features: list[torch.Tensor], points_norm: torch.Tensor) -> torch.Tensor:
        """Unclamped decoder output ``[B, N]`` in mm (what the training loss sees)."""
        if points_norm.dim() != 3 or points_norm.shape[-1] != 3:
            raise InputError(f"points must have shape [B, N, 3]; got {tuple(points_norm.shape)}.")
        points_norm = points_norm.to(features[0].device, features[0].dtype)
        return self.decoder(self._features_at(features, points_norm)).squeeze(1)

    def decode(self, features: list[torch.Tensor], points_norm: torch.Tensor) -> torch.Tensor:
        """Distances ``[B, N]`` in mm, in [0, truncation_mm]."""
        return self.decode_raw(features, points_norm).clamp(0.0, self.config.truncation_mm)

    def forward(self, crop: torch.Tensor, points_norm: torch.Tensor) -> torch.Tensor:
        """Raw distances for training (one call, so DistributedDataParallel can wrap the model)."""
        return self.decode_raw(self.encode(crop), points_norm)

    # -- chunked inference -------------------------------------------------------------------------
    @torch.no_grad()
    def query(self, features: list[torch.Tensor], points_norm: torch.Tensor, chunk_size: int = 50_000
              ) -> torch.Tensor:
        """:meth:`decode` in chunks of ``chunk_size`` points so memory does not grow with N."""
        if chunk_size < 1:
            raise InputError("chunk_size must be ≥ 1.")
        out = [self.decode(features, points_norm[:, i:i + chunk_size])
               for i in range(0, points_norm.shape[1], chunk_size)]
        if not out:
            return torch.zeros(points_norm.shape[0], 0, device=features[0].device)
        return torch.cat(out, dim=1)

    def query_with_grad(self, features: list[torch.Tensor], points_norm: torch.Tensor,
                        chunk_size: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances ``[B, N]`` and ∂u/∂(normalised point) ``[B, N, 3]``, chunked.

        The gradient is that of the *raw* output, so it stays meaningful where the clamped distance is 0
        (exactly where meshing needs a direction). Convert it to LPS with
        :meth:`NUDFCore.crop.CropGeometry.normalized_gradient_to_lps`.
        """
        if chunk_size < 1:
            raise InputError("chunk_size must be ≥ 1.")
        feats = [f.detach() for f in features]
        us, gs = [], []
        for i in range(0, points_norm.shape[1], chunk_size):
            with torch.enable_grad():
                p = points_norm[:, i:i + chunk_size].detach().to(feats[0].device, feats[0].dtype)
                p.requires_grad_(True)
                raw = self.decode_raw(feats, p)
                (g,) = torch.autograd.grad(raw.sum(), p)
            us.append(raw.detach().clamp(0.0, self.config.truncation_mm))
            gs.append(g.detach())
        if not us:
            b = points_norm.shape[0]
            return torch.zeros(b, 0), torch.zeros(b, 0, 3)
        return torch.cat(us, dim=1), torch.cat(gs, dim=1)


# ------------------------------------------------------------------------------------------ devices
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA if available, else CPU; a clear :class:`InputError` when CUDA is asked but absent."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was requested but this torch build/machine has no usable CUDA GPU; "
                             "use --device cpu (or auto).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{name} does not exist: {torch.cuda.device_count()} CUDA device(s) present.")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("MPS was requested but is not available; use --device cpu.")
    elif dev.type != "cpu":
        raise InputError(f"Unsupported device {name!r}: use auto, cpu, cuda or cuda:N.")
    return dev


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    extra: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (its weights and config) to one file, atomically.

    ``extra`` is a JSON-able description (training data, seed, metrics). ``optimizer``, ``epoch`` and
    ``train_state`` (scheduler step, RNG states, history) make the file resumable. The file appears only
    once completely written, so a run killed mid-save never leaves a broken checkpoint.
    """
    net = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if not isinstance(net, NUDFNet):
        raise InputError(f"save_checkpoint expects a NUDFNet; got {type(net).__name__}.")
    if extra is not None:
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as exc:
            raise InputError(f"Checkpoint 'extra' must be JSON-able: {exc}") from exc
    payload: dict[str, Any] = {
        "nudf_checkpoint": CHECKPOINT_FORMAT,
        "nudfcore_version": __version__,
        "config": net.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "extra": dict(extra or {}),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if epoch is not None:
        payload["epoch"] = int(epoch)
    if train_state is not None:
        payload["train_state"] = train_state
    p = Path(path)
    if not p.parent.exists():
        raise InputError(f"The output folder {p.parent} does not exist.")
    with atomic_output(p, suffix=".tmp") as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return p


def _load_failure_message(p: Path, exc: Exception) -> str:
    """One line for a failed weights-only load; torch's own message is a page long.

    A file that needs anything beyond tensors and plain containers (a class, a function such as
    ``os.system``) is refused by the weights-only unpickler: say so, and never offer to load it unsafely.
    """
    text = " ".join(str(exc).split())
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if "Weights only load failed" in text and found:
        return f"{p} is not a plain-weights checkpoint; refusing to run code from it (it references {found.group(1)})."
    text = text.partition("WeightsUnpickler error:")[2].partition(" Check the documentation")[0].strip() or text
    first_sentence = text.split(". ")[0].rstrip(".")
    detail = textwrap.shorten(first_sentence, 160, placeholder="...") if text else type(exc).__name__
    return f"{p} is not a readable model checkpoint (corrupt or truncated file?): {detail}"


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint file's contents (a dict), raising :class:`CheckpointError`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"No such model checkpoint: {p}")
    if not p.is_file():
        raise CheckpointError(f"{p} is not a file (expected a .pt model checkpoint).")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): an interrupted download or copy?")
    try:
        data = torch.load(p, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors...
        raise CheckpointError(_load_failure_message(p, exc)) from exc
    if not isinstance(data, dict) or "nudf_checkpoint" not in data:
        raise CheckpointError(f"{p} is a torch file but not a NUDF model checkpoint (no 'nudf_checkpoint' key).")
    fmt = data.get("nudf_checkpoint")
    if not isinstance(fmt, int) or fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{p} has checkpoint format {fmt!r} (written by NUDFCore {data.get('nudfcore_version', '?')}); "
            f"this NUDFCore {__version__} reads format {CHECKPOINT_FORMAT}. Use a matching NUDFCore version.")
    for key in ("config", "state_dict"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{p} is missing its '{key}' section.")
    return data


def model_from_checkpoint_data(data: dict[str, Any], source: str = "checkpoint") -> NUDFNet:
    """Rebuild the network from :func:`read_checkpoint` output."""
    try:
        config = ModelConfig.from_dict(dict(data["config"]))
    except (InputError, TypeError) as exc:
        raise CheckpointError(f"{source} holds an incompatible model config: {exc}") from exc
    model = NUDFNet(config)
    try:
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"{source}: the weights do not match the architecture it declares ({first}).") from exc
    model.checkpoint_info = {k: data.get(k) for k in ("nudfcore_version", "extra", "epoch")}  # type: ignore[attr-defined]
    return model


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> NUDFNet:
    """Load a model for inference (eval mode, on ``device``); any problem → :class:`CheckpointError`."""
    dev = resolve_device(device) if isinstance(device, str) else device
    data = read_checkpoint(path, "cpu")
    model = model_from_checkpoint_data(data, str(path))
    return model.to(dev).eval()

