"""Training a NUDF model on a folder of cases (phantoms or real data in the same layout).

One step: for each batch item pick a training case, centre a crop on a random point of the LAA lumen
(+ jitter: a clinician's seed can be anywhere inside the appendage), rotate the crop axes slightly,
augment intensities, draw query points of that case inside the crop with a fixed mix of kinds (lumen
side / outer side / uniform, plus hard negatives on other edges and beyond the ostium: docs/method.md), and
minimise a truncated L1 loss in mm. Validation runs each epoch on fixed crops of the validation cases and
reports the mean error near the surface and the **false-surface rate**, the error that dominated the
first CPU experiment. Checkpoints: ``--out`` holds the best model (lowest validation loss), a sibling
``<name>.last.pt`` the last epoch with optimiser, schedule and RNG states for ``--resume``.

Several GPUs/processes: launch with ``torchrun --nproc_per_node=N -m NUDFCore train ...``; each process
trains on its own random crops, gradients are averaged by DistributedDataParallel (NCCL on CUDA, gloo
on CPU), and only rank 0 validates and writes checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import __version__
from .crop import CropGeometry, HUWindow, extract_crop, random_rotation, subvolume_around
from .errors import CheckpointError, InputError, OutputExistsError
from .model import (
    ModelConfig,
    NUDFNet,
    model_from_checkpoint_data,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)

#: Sample kinds written by :mod:`NUDFCore.sampling`.
KIND_LUMEN, KIND_OUTER, KIND_UNIFORM, KIND_EDGE, KIND_BEYOND_OSTIUM = 0, 1, 2, 3, 4


@dataclass
class TrainConfig:
    """Options of :func:`train` (the CLI ``nudf train`` maps onto these one to one)."""

    data: Path
    out: Path
    epochs: int = 30
    steps_per_epoch: int = 100
    points: int = 5000  # query points per crop per step
    batch_size: int = 1
    lr: float = 3e-4
    lr_min_fraction: float = 0.05  # cosine schedule ends at lr * this
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    preset: str = "small"
    crop_n: int | None = None  # override the preset's grid
    crop_mm: float | None = None  # override the preset's cube size
    truncation_mm: float | None = None
    resume: bool | Path = False  # True: continue from <out>.last.pt; a path: from that checkpoint
    init: Path | None = None  # start from this model's weights (fresh optimiser and schedule): fine-tuning
    force: bool = False
    # query points
    sample_points: int = 200_000  # per case, cached on disk by sampling.load_or_sample
    mix: tuple[float, float, float] = (0.45, 0.45, 0.10)  # lumen side / outer side / uniform
    hard_negative_fraction: float = 0.2  # share of kinds 3 + 4 (other edges, beyond the ostium)
    # augmentation
    augment: bool = True
    center_jitter_mm: float = 3.0
    rotation_deg: float = 20.0  # hearts lie differently in real chests than in the phantoms' +-10 degree poses
    noise_sigma: float = 0.05  # in normalised intensity units
    intensity_scale: float = 0.1  # × U(1 - s, 1 + s)
    intensity_offset: float = 0.05  # + U(-o, o)
    blur_probability: float = 0.3  # blur along one random crop axis (thick slices, soft kernels)
    blur_max_voxels: float = 1.2  # its sigma ~ U(0.3, max) crop voxels
    # validation
    val_points: int = 20_000  # per validation case
    threads: int | None = None  # torch CPU threads (None: torch's default)
    max_cases: int | None = None  # use only the first N cases (quick runs)
    stop_after_epochs: int | None = None  # end this run after N epochs (time-sliced jobs; --resume goes on)

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        if isinstance(self.resume, str):
            self.resume = Path(self.resume)
        if self.init is not None:
            self.init = Path(self.init)
            if self.resume:
                raise InputError("--init starts a new training from a model's weights and --resume continues "
                                 "one: use one of them.")
        for name in ("epochs", "steps_per_epoch", "points", "batch_size", "val_points", "sample_points"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be ≥ 1; got {getattr(self, name)}.")
        if not self.lr > 0:
            raise InputError(f"The learning rate must be > 0; got {self.lr}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1); got {self.val_fraction}.")
        if not 0.0 <= self.hard_negative_fraction < 1.0:
            raise InputError(f"hard_negative_fraction must be in [0, 1); got {self.hard_negative_fraction}.")
        mix = np.asarray(self.mix, dtype=float)
        if mix.shape != (3,) or np.any(mix < 0) or mix.sum() <= 0:
            raise InputError(f"mix must be three non-negative shares; got {self.mix}.")
        self.mix = tuple(float(v) for v in mix / mix.sum())

    def model_config(self) -> ModelConfig:
        return ModelConfig.preset(self.preset, crop_n=self.crop_n, crop_size_mm=self.crop_mm,
                                  truncation_mm=self.truncation_mm)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d


def last_checkpoint_path(out: Path) -> Path:
    """``model.pt`` → ``model.last.pt`` (the resumable last-epoch checkpoint next to the best one)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


# ------------------------------------------------------------------------------------------ cases
@dataclass
class PreparedCase:
    """A case as training needs it in memory: a small cached image region and its query samples."""

    name: str
    image: Any  # float32 SimpleITK image around the LAA (HU)
    points_lps: np.ndarray  # (N, 3) float32
    distance_mm: np.ndarray  # (N,) float32
    kind: np.ndarray  # (N,) int8
    lumen_points_lps: np.ndarray  # (M, 3)
    kind_index: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.points_lps = np.asarray(self.points_lps, dtype=np.float32).reshape(-1, 3)
        self.distance_mm = np.asarray(self.distance_mm, dtype=np.float32).reshape(-1)
        self.kind = np.asarray(self.kind, dtype=np.int8).reshape(-1)
        self.lumen_points_lps = np.asarray(self.lumen_points_lps, dtype=np.float64).reshape(-1, 3)
        if not (len(self.points_lps) == len(self.distance_mm) == len(self.kind)) or len(self.points_lps) == 0:
            raise InputError(f"Case {self.name}: samples are empty or their arrays disagree in length.")
        if len(self.lumen_points_lps) == 0:
            raise InputError(f"Case {self.name}: no lumen points to centre crops on.")


def prepare_case(case: Any, config: TrainConfig, model_config: ModelConfig) -> PreparedCase:
    """Load a :class:`NUDFCore.data.Case`'s samples (cached on disk) and cache the CT region it needs."""
    from .sampling import load_or_sample

    samples = load_or_sample(case, n_points=config.sample_points, seed=config.seed)
    volume = case.load_volume()
    lumen = np.asarray(samples.lumen_points_lps, dtype=np.float64)
    margin = 0.5 * model_config.crop_size_mm * math.sqrt(3) + 3.0 * config.center_jitter_mm + 2.0
    image = subvolume_around(volume, lumen, margin)
    return PreparedCase(Path(case.case_dir).name, image, samples.points_lps, samples.distance_mm, samples.kind,
                        lumen)


# ------------------------------------------------------------------------------------------ batches
def _allocate(total: int, shares: dict[int, float], available: dict[int, int]) -> dict[int, int]:
    """Split ``total`` points over kinds by ``shares``, giving the share of absent kinds to the others."""
    live = {k: s for k, s in shares.items() if s > 0 and available.get(k, 0) > 0}
    if not live:
        return {}
    norm = sum(live.values())
    counts = {k: int(total * s / norm) for k, s in live.items()}
    rest = total - sum(counts.values())
    for k in sorted(live, key=lambda k: -live[k])[:rest]:
        counts[k] += 1
    return counts


def kind_shares(config: TrainConfig) -> dict[int, float]:
    """Target share of each sample kind in a batch."""
    h = config.hard_negative_fraction
    lumen, outer, uniform = config.mix
    return {KIND_LUMEN: (1 - h) * lumen, KIND_OUTER: (1 - h) * outer, KIND_UNIFORM: (1 - h) * uniform,
            KIND_EDGE: h / 2, KIND_BEYOND_OSTIUM: h / 2}


def draw_points(case: PreparedCase, geometry: CropGeometry, n: int, shares: dict[int, float],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of ``case`` inside the crop, mixed by kind: (normalised points (n, 3), distances (n,))."""
    inside = np.flatnonzero(geometry.contains_lps(case.points_lps))
    if len(inside) == 0:
        raise InputError(f"Case {case.name}: no training samples fall inside the crop.")
    kinds = case.kind[inside]
    pools = {k: inside[kinds == k] for k in shares}
    counts = _allocate(n, shares, {k: len(v) for k, v in pools.items()})
    chosen = np.concatenate([rng.choice(pools[k], size=c, replace=c > len(pools[k])) for k, c in counts.items()
                             if c > 0])
    chosen = rng.permutation(chosen)
    q = geometry.lps_to_normalized(case.points_lps[chosen]).astype(np.float32)
    return q, case.distance_mm[chosen]


def training_crop(case: PreparedCase, model_config: ModelConfig, config: TrainConfig,
                  rng: np.random.Generator) -> tuple[np.ndarray, CropGeometry]:
    """A randomly centred, rotated and intensity-augmented crop of ``case``."""
    centre = case.lumen_points_lps[rng.integers(len(case.lumen_points_lps))]
    rotation = np.eye(3)
    if config.augment:
        centre = centre + rng.normal(0.0, config.center_jitter_mm, size=3)
        rotation = random_rotation(rng, config.rotation_deg)
    geom = CropGeometry(centre, model_config.crop_size_mm, model_config.crop_n, rotation)
    crop = extract_crop(case.image, geom, HUWindow.from_value(model_config.hu_window))
    if config.augment:
        crop = augment_intensities(crop, config, rng)
    return crop.astype(np.float32), geom


def augment_intensities(crop: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Scale/offset, sometimes a blur along one axis, then noise: a normalised crop as another scanner might see it.

    Shared with the U-Net baseline so both methods train on the same augmentation.
    """
    scale = rng.uniform(1 - config.intensity_scale, 1 + config.intensity_scale)
    offset = rng.uniform(-config.intensity_offset, config.intensity_offset)
    crop = crop * scale + offset
    if rng.random() < config.blur_probability:
        from scipy.ndimage import gaussian_filter1d

        sigma = rng.uniform(0.3, max(config.blur_max_voxels, 0.3))
        crop = gaussian_filter1d(crop, sigma, axis=int(rng.integers(3)), mode="nearest")
    if config.noise_sigma > 0:
        crop = crop + rng.normal(0.0, config.noise_sigma, size=crop.shape)
    return crop


def truncated_l1(pred_mm: torch.Tensor, true_mm: torch.Tensor, truncation_mm: float) -> torch.Tensor:
    """L1 between prediction and truth, both clamped at ``truncation_mm`` (mean over points and batch).

    Written so no prediction gets a dead gradient: far points (truth ≥ T) are only pushed up to T.
    """
    t = true_mm.clamp(max=truncation_mm)
    far = true_mm >= truncation_mm
    err = torch.where(far, torch.relu(truncation_mm - pred_mm), (pred_mm - t).abs())
    return err.mean()


# ------------------------------------------------------------------------------------------ validation
@dataclass
class ValidationCrop:
    name: str
    crop: np.ndarray
    points_norm: np.ndarray
    distance_mm: np.ndarray


def validation_crops(cases: Sequence[PreparedCase], model_config: ModelConfig, n_points: int, seed: int
                     ) -> list[ValidationCrop]:
    """One fixed, un-augmented crop per case, centred on the lumen point nearest the lumen centroid."""
    out = []
    rng = np.random.default_rng(seed)
    for case in cases:
        lumen = case.lumen_points_lps
        centre = lumen[np.argmin(np.linalg.norm(lumen - lumen.mean(axis=0), axis=1))]
        geom = CropGeometry(centre, model_config.crop_size_mm, model_config.crop_n)
        crop = extract_crop(case.image, geom, HUWindow.from_value(model_config.hu_window))
        idx = np.flatnonzero(geom.contains_lps(case.points_lps))
        if len(idx) > n_points:
            idx = np.sort(rng.choice(idx, size=n_points, replace=False))
        out.append(ValidationCrop(case.name, crop, geom.lps_to_normalized(case.points_lps[idx]).astype(np.float32),
                                  case.distance_mm[idx]))
    return out


@torch.no_grad()
def evaluate(model: NUDFNet, crops: Sequence[ValidationCrop], device: torch.device) -> dict[str, float]:
    """Validation metrics pooled over all crops.

    ``near_mae_mm``: mean |pred − true| where true < 2 mm; ``false_surface_rate``: of the points the model
    puts within 1 mm of the surface, the fraction whose truth is > 3 mm; ``loss``: truncated L1.
    """
    from .sampling import false_surface_rate

    model.eval()
    t = model.config.truncation_mm
    preds, trues = [], []
    for vc in crops:
        feats = model.encode(torch.from_numpy(vc.crop)[None, None].to(device))
        u = model.query(feats, torch.from_numpy(vc.points_norm)[None].to(device))[0].cpu().numpy()
        preds.append(u)
        trues.append(vc.distance_mm)
    pred = np.concatenate(preds)
    true = np.concatenate(trues).astype(np.float64)
    near = true < 2.0
    return {
        "loss": float(np.mean(np.abs(pred - np.minimum(true, t)))),
        "near_mae_mm": float(np.mean(np.abs(pred[near] - true[near]))) if near.any() else float("nan"),
        "false_surface_rate": false_surface_rate(pred, true, near_mm=1.0, far_mm=3.0),
        "false_surface_fraction": float(np.mean((pred < 1.0) & (true > 3.0))),
        "n_points": int(len(true)),
    }


# ------------------------------------------------------------------------------------------ training
def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    frac = min(step / max(total, 1), 1.0)
    lo = config.lr * config.lr_min_fraction
    return lo + 0.5 * (config.lr - lo) * (1 + math.cos(math.pi * frac))


def _check_outputs(config: TrainConfig) -> Path | None:
    """Validate --out/--resume/--force; return the checkpoint to resume from, if any."""
    out = config.out
    if not out.parent.exists():
        raise InputError(f"The output folder {out.parent} does not exist.")
    if out.suffix.lower() != ".pt":
        raise InputError(f"The model file should end in .pt; got {out.name}.")
    if config.resume:
        src = last_checkpoint_path(out) if config.resume is True else Path(config.resume)
        if not src.exists():
            raise CheckpointError(f"Cannot resume: {src} does not exist (train once without --resume first).")
        return src
    if (out.exists() or last_checkpoint_path(out).exists()) and not config.force:
        raise OutputExistsError(f"{out} (or its .last.pt) already exists; pass --force to overwrite or --resume "
                                "to continue training.")
    return None


def load_cases(config: TrainConfig) -> tuple[list[Any], list[Any], bool]:
    """(train cases, validation cases, whether validation reuses training cases)."""
    from .data import list_cases, split_cases

    cases = list_cases(config.data)
    if config.max_cases is not None:
        cases = cases[: config.max_cases]
    if not cases:
        raise InputError(f"No cases found in {config.data}.")
    if len(cases) == 1 or config.val_fraction == 0:
        return list(cases), list(cases), True
    train_cases, val_cases = split_cases(cases, config.val_fraction, config.seed)
    if not val_cases:
        return list(train_cases), list(train_cases), True
    return list(train_cases), list(val_cases), False


def train(config: TrainConfig, progress: bool = True, cases: tuple[list, list] | None = None) -> dict[str, Any]:
    """Train a model as ``config`` says; returns ``{"history": [per-epoch metrics], "best": path, "last": path,
    "model": the last-epoch NUDFNet, ...}``.

    ``cases`` may pass already prepared (train, val) :class:`PreparedCase` lists (tests, notebooks);
    otherwise the cases of ``config.data`` are listed, split, sampled and cached.
    """
    from tqdm.auto import tqdm

    rank, world = _distributed()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    resume_from = _check_outputs(config)
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    show = progress and rank == 0

    state: dict[str, Any] | None = None
    if resume_from is not None:
        state = read_checkpoint(resume_from)
        if "optimizer" not in state or "train_state" not in state:
            raise CheckpointError(f"{resume_from} holds no optimiser/training state; resume from a .last.pt file.")
        model = model_from_checkpoint_data(state, str(resume_from))
        model_config = model.config
    elif config.init is not None:
        # fine-tuning: the architecture is the initial model's, whatever --preset/--crop-* say
        torch.manual_seed(config.seed)
        model = model_from_checkpoint_data(read_checkpoint(config.init), str(config.init))
        model_config = model.config
    else:
        torch.manual_seed(config.seed)
        model_config = config.model_config()
        model = NUDFNet(model_config)
    model.to(device)

    # -- data -------------------------------------------------------------------------------------
    val_on_train = False
    if cases is not None:
        train_cases, val_cases = cases
    else:
        raw_train, raw_val, val_on_train = load_cases(config)
        bar = tqdm(raw_train + ([] if val_on_train else raw_val), desc="preparing cases", disable=not show)
        prepared = {id(c): prepare_case(c, config, model_config) for c in bar}
        train_cases = [prepared[id(c)] for c in raw_train]
        val_cases = train_cases if val_on_train else [prepared[id(c)] for c in raw_val]
    if not train_cases:
        raise InputError("No training cases.")
    val_crops = validation_crops(val_cases, model_config, config.val_points, config.seed) if rank == 0 else []

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rng = np.random.default_rng([config.seed, rank])
    start_epoch, step, best_loss, history = 0, 0, math.inf, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        ts = state["train_state"]
        start_epoch, step = int(state.get("epoch", 0)), int(ts["step"])
        best_loss = float(ts.get("best_loss", math.inf))
        history = list(ts.get("history", []))
        if rank == 0 and "rng" in ts:
            rng.bit_generator.state = ts["rng"]
        else:
            rng = np.random.default_rng([config.seed, rank, start_epoch])
        if "torch_rng" in ts:
            torch.set_rng_state(ts["torch_rng"])
        if start_epoch >= config.epochs:
            raise InputError(f"{resume_from} has already trained {start_epoch} epoch(s); pass --epochs larger "
                             f"than that to continue.")
        previous_val = (state.get("extra") or {}).get("val_cases")
        if previous_val is not None and sorted(previous_val) != sorted(c.name for c in val_cases):
            # continuing on other data (fine-tuning on more cases): the old best loss was measured on other
            # validation cases, so it says nothing about these; the best model is chosen afresh
            best_loss = math.inf
            if show:
                tqdm.write("The validation cases differ from the checkpoint's: the best model is chosen afresh.")

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    shares = kind_shares(config)
    total_steps = config.epochs * config.steps_per_epoch
    t_model = model_config.truncation_mm
    extra_base = {
        "nudfcore_version": __version__,
        "data": str(config.data),
        "train_cases": [c.name for c in train_cases],
        "val_cases": [c.name for c in val_cases],
        "validation_on_training_cases": bool(val_on_train or cases is not None and val_cases is train_cases),
        "seed": config.seed,
        "world_size": world,
        "train_config": config.to_dict(),
    }
    best_path, last_path = config.out, last_checkpoint_path(config.out)

    end_epoch = config.epochs
    if config.stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + max(int(config.stop_after_epochs), 1))
    for epoch in range(start_epoch, end_epoch):
        net.train()
        t0 = time.time()
        running, losses = None, []
        bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show,
                   leave=True)
        for _ in bar:
            lr = _lr_at(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            crops, pts, dists = [], [], []
            for _b in range(config.batch_size):
                case = train_cases[rng.integers(len(train_cases))]
                crop, geom = training_crop(case, model_config, config, rng)
                q, d = draw_points(case, geom, config.points, shares, rng)
                crops.append(crop)
                pts.append(q)
                dists.append(d)
            crop_t = torch.from_numpy(np.stack(crops))[:, None].to(device)
            pts_t = torch.from_numpy(np.stack(pts)).to(device)
            dist_t = torch.from_numpy(np.stack(dists)).to(device)
            loss = truncated_l1(net(crop_t, pts_t), dist_t, t_model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = float(loss.detach())
            losses.append(value)
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.1e}")
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                                  "seconds": round(time.time() - t0, 2)}
        if rank == 0:
            record.update({f"val_{k}": v for k, v in evaluate(model, val_crops, device).items()})
            history.append(record)
            improved = record["val_loss"] < best_loss
            if improved:
                best_loss = record["val_loss"]
                save_checkpoint(model, best_path, extra=dict(extra_base, metrics=record, best_epoch=epoch + 1),
                                epoch=epoch + 1)
            train_state = {"step": step, "best_loss": best_loss, "history": history,
                           "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
            save_checkpoint(model, last_path, extra=dict(extra_base, metrics=record), optimizer=optimizer,
                            epoch=epoch + 1, train_state=train_state)
            if show:
                tqdm.write(f"epoch {epoch + 1}: train loss {record['train_loss']:.3f} mm | val near-surface error "
                           f"{record['val_near_mae_mm']:.3f} mm, false-surface rate "
                           f"{record['val_false_surface_rate']:.3f}{' (best)' if improved else ''}")
        if world > 1:
            dist.barrier()
    return {"history": history, "best": str(best_path), "last": str(last_path), "best_loss": best_loss,
            "rank": rank, "world_size": world, "model": model.eval()}
