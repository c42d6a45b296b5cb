"""3D U-Net baseline: the same cases and crop box as NUDF, a voxel labelmap instead of a distance field.

Not a test: it trains a MONAI ``UNet`` to label the LAA lumen on NUDF's crop grid, evaluates its surface on
held-out cases with the same metrics and table as ``benchmarks/accuracy.py``, and measures the memory of
both methods (each figure in a fresh subprocess, so peaks are honest). Example::

    python benchmarks/unet_baseline.py --data runs/phantoms --test runs/phantoms_test --out runs/unet \
        --nudf-model NUDFCore/models/nudf_laa.pt
    python benchmarks/unet_baseline.py --quick          # plumbing check: 4 tiny phantoms, 32³, a few steps

Labels (on the crop grid): a voxel is LAA lumen when it lies on the lumen side of the open GT mesh (signed
distance, winding oriented so the seed is negative) and on the LAA side of the ostium plane. The label is
carried ``--beyond-ostium-mm`` (3 mm) past the plane as a straight extension of the wall, so the predicted
surface is *cut* by the ostium plane — exactly as the GT is — instead of ending in a learned cap lying on
the plane. The signed field is computed once per case on a 1 mm grid around the LAA (cached as
``unet_label_<hash>.npz`` in the case folder) and resampled linearly onto each (jittered, rotated) crop.

Surface: marching cubes of the predicted probability at 0.5 on the crop grid, mapped to LPS by the crop
geometry, clipped at the case's ostium plane (meta.json), largest component; compared with the GT by
``NUDFCore.metrics.surface_metrics``. Inference crops are centred at the seed and, like NUDF, re-centred
once on the first prediction's lumen centroid.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

LABEL_SPACING_MM = 1.0
LABEL_MARGIN_MM = 6.0
OUTSIDE_VALUE = 10.0  # field value (mm) outside the cached label box: "not lumen"
UNET_CHANNELS = (16, 32, 64, 128)
UNET_STRIDES = (2, 2, 2)


# ------------------------------------------------------------------------------------------ machine
def machine() -> str:
    """CPU model (or GPU name), threads and library versions, for the tables' captions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({os.cpu_count()} logical CPUs){gpu}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


# ------------------------------------------------------------------------------------------ labels
@dataclass
class LabelField:
    """Signed lumen field (mm, negative = LAA lumen) on an axis-aligned LPS grid, as a SimpleITK image."""

    image: object  # sitk.Image float32
    lumen_points_lps: np.ndarray  # grid points well inside the lumen (training crop centres)


def _file_digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def lumen_field(case, beyond_ostium_mm: float = 3.0, spacing_mm: float = LABEL_SPACING_MM) -> LabelField:
    """The case's lumen field ``max(s·sd(p'), −(t + beyond))``, cached in the case folder.

    ``t = (p − ostium_centre)·n`` is the height above the ostium plane (towards the LAA), ``s`` orients the
    open mesh's winding so the seed is on the negative side, and ``p' = p + max(ε − t, 0)·n`` projects
    points below the plane just above it, so the field beyond the ostium is the wall's straight extension.
    """
    import SimpleITK as sitk

    from NUDFCore.io import polydata_points
    from NUDFCore.meshtools import signed_distance
    from NUDFCore.sampling import lumen_side_sign

    c = np.asarray(case.ostium_center_lps, float)
    n = np.asarray(case.ostium_normal_lps, float)
    n = n / np.linalg.norm(n)
    key = hashlib.sha1(json.dumps({
        "mesh": _file_digest(case.mesh_path), "c": np.round(c, 6).tolist(), "n": np.round(n, 6).tolist(),
        "seed": np.round(np.asarray(case.seed_lps, float), 6).tolist(), "beyond": beyond_ostium_mm,
        "spacing": spacing_mm, "margin": LABEL_MARGIN_MM, "v": 1}).encode()).hexdigest()[:16]
    cache = Path(case.case_dir) / f"unet_label_{key}.npz"
    if cache.exists():
        try:
            z = np.load(cache)
            img = sitk.GetImageFromArray(z["field"])
            img.SetOrigin(tuple(float(v) for v in z["origin"]))
            img.SetSpacing([float(spacing_mm)] * 3)
            return LabelField(img, z["lumen"])
        except (OSError, KeyError, ValueError):
            pass  # a broken cache is recomputed
    mesh = case.load_mesh()
    pts = polydata_points(mesh)
    lo = pts.min(axis=0) - LABEL_MARGIN_MM
    hi = pts.max(axis=0) + LABEL_MARGIN_MM
    size = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    axes = [lo[a] + spacing_mm * np.arange(size[a]) for a in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    grid = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    t = (grid - c) @ n
    proj = grid + np.maximum(0.1 - t, 0.0)[:, None] * n
    s = -lumen_side_sign(mesh, case.seed_lps)  # lumen_side_sign: +1 = seed on the winding's negative side
    sd = -s * signed_distance(mesh, proj)
    field = np.maximum(sd, -(t + beyond_ostium_mm)).astype(np.float32).reshape(size[::-1])
    inner = grid[(field.reshape(-1) < -1.0) & (t > 1.0)]
    if len(inner) == 0:
        inner = np.asarray(case.seed_lps, float)[None]
    rng = np.random.default_rng(0)
    inner = inner[rng.choice(len(inner), size=min(len(inner), 4000), replace=False)].astype(np.float32)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez_compressed(tmp, field=field, origin=lo, lumen=inner)
    tmp.replace(cache)
    img = sitk.GetImageFromArray(field)
    img.SetOrigin(tuple(float(v) for v in lo))
    img.SetSpacing([float(spacing_mm)] * 3)
    return LabelField(img, inner)


def crop_labels(field: LabelField, geometry) -> np.ndarray:
    """Binary lumen labels ``[n, n, n]`` (uint8, ``[z, y, x]``) of ``field`` on the crop grid."""
    import SimpleITK as sitk

    out = sitk.Resample(field.image, geometry.reference_image(), sitk.Transform(), sitk.sitkLinear, OUTSIDE_VALUE,
                        sitk.sitkFloat32)
    return (sitk.GetArrayViewFromImage(out) < 0).astype(np.uint8)


# ------------------------------------------------------------------------------------------ network
def build_unet():
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=UNET_CHANNELS, strides=UNET_STRIDES,
                num_res_units=2, norm="instance")


@dataclass
class PreparedCase:
    name: str
    image: object  # float32 SimpleITK region around the LAA (HU)
    field: LabelField
    case: object


def prepare(case, crop_mm: float, beyond_mm: float, jitter_mm: float) -> PreparedCase:
    from NUDFCore.crop import subvolume_around

    f = lumen_field(case, beyond_mm)
    margin = 0.5 * crop_mm * math.sqrt(3) + 3.0 * jitter_mm + 2.0
    image = subvolume_around(case.load_volume(), f.lumen_points_lps, margin)
    return PreparedCase(case.name, image, f, case)


def training_sample(pc: PreparedCase, crop_n: int, crop_mm: float, rng: np.random.Generator, window, aug):
    """A crop and its labels, augmented exactly as NUDF's training crops (``aug`` is NUDF's TrainConfig:
    centre on a lumen point + jitter, rotation, then ``NUDFCore.train.augment_intensities``)."""
    from NUDFCore.crop import CropGeometry, extract_crop, random_rotation
    from NUDFCore.train import augment_intensities

    centre = pc.field.lumen_points_lps[rng.integers(len(pc.field.lumen_points_lps))].astype(float)
    centre = centre + rng.normal(0.0, aug.center_jitter_mm, size=3)
    geom = CropGeometry(centre, crop_mm, crop_n, random_rotation(rng, aug.rotation_deg))
    crop = augment_intensities(extract_crop(pc.image, geom, window), aug, rng)
    return crop.astype(np.float32), crop_labels(pc.field, geom)


def predict(net, image, geometry, window, device) -> np.ndarray:
    """Lumen probability ``[n, n, n]`` on ``geometry``'s grid."""
    import torch

    from NUDFCore.crop import extract_crop

    crop = extract_crop(image, geometry, window)
    with torch.no_grad():
        logits = net(torch.from_numpy(crop)[None, None].to(device))
        return torch.softmax(logits, dim=1)[0, 1].float().cpu().numpy()


def dice(prob: np.ndarray, labels: np.ndarray) -> float:
    p = prob > 0.5
    t = labels > 0
    denom = p.sum() + t.sum()
    return float(2 * (p & t).sum() / denom) if denom else 1.0


def probability_surface(prob: np.ndarray, geometry, ostium_center_lps, ostium_normal_lps):
    """Marching cubes at 0.5 → LPS → clipped at the ostium plane (LAA side kept) → largest component."""
    from skimage.measure import marching_cubes

    from NUDFCore.io import make_polydata
    from NUDFCore.meshtools import clip_by_plane, keep_largest_component

    if prob.max() <= 0.5 or prob.min() >= 0.5:
        return None
    verts, faces, _, _ = marching_cubes(prob, level=0.5)  # verts in (z, y, x) voxel units
    xyz = verts[:, ::-1] * (2.0 / (geometry.n - 1)) - 1.0
    mesh = make_polydata(geometry.normalized_to_lps(xyz), faces.astype(np.int64))
    out = clip_by_plane(mesh, ostium_center_lps, ostium_normal_lps)
    if out.GetNumberOfCells() == 0:
        return None
    return keep_largest_component(out)


def segment_case(net, case, volume, crop_n: int, crop_mm: float, window, device, two_pass: bool = True):
    """U-Net surface of one case (LPS mesh or None) and its wall time (CT already read, as in accuracy.py)."""
    from NUDFCore.crop import CropGeometry, subvolume_around

    t0 = time.perf_counter()
    seed = np.asarray(case.seed_lps, float)
    region = subvolume_around(volume, seed[None], margin_mm=crop_mm)
    geom = CropGeometry(seed, crop_mm, crop_n)
    prob = predict(net, region, geom, window, device)
    if two_pass and (prob > 0.5).any():
        idx = np.argwhere(prob > 0.5)[:, ::-1] * (2.0 / (crop_n - 1)) - 1.0  # (x, y, z) normalised
        centre = geom.normalized_to_lps(idx).mean(axis=0)
        if np.linalg.norm(centre - seed) > 0.05 * crop_mm:
            geom = CropGeometry(centre, crop_mm, crop_n)
            prob = predict(net, region, geom, window, device)
    mesh = probability_surface(prob, geom, case.ostium_center_lps, case.ostium_normal_lps)
    return mesh, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ training
def train_unet(args, train_cases, val_cases, device):
    import torch
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    from NUDFCore.crop import CropGeometry, HUWindow, extract_crop

    window = HUWindow()
    from NUDFCore.train import TrainConfig

    aug = TrainConfig(data=".", out="unused.pt")  # NUDF's default augmentation, field for field
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    prep = [prepare(c, args.crop_mm, args.beyond_ostium_mm, aug.center_jitter_mm)
            for c in tqdm(train_cases + val_cases, desc="labels + regions")]
    train_p, val_p = prep[:len(train_cases)], prep[len(train_cases):]
    val_items = []
    for pc in val_p:  # fixed, un-augmented crops at the seed
        g = CropGeometry(pc.case.seed_lps, args.crop_mm, args.crop_n)
        val_items.append((pc, g, crop_labels(pc.field, g)))
    net = build_unet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    total = args.epochs * args.steps
    history, best, step = [], -1.0, 0
    out = Path(args.out)
    t_train = time.perf_counter()
    step_times = []
    for epoch in range(args.epochs):
        net.train()
        losses = []
        bar = tqdm(range(args.steps), desc=f"U-Net epoch {epoch + 1}/{args.epochs}")
        for _ in bar:
            elapsed = (time.perf_counter() - t_train) / 60.0
            if args.max_minutes and elapsed >= args.max_minutes:
                break
            frac = step / max(total, 1)
            if args.max_minutes:  # a time budget: the schedule follows whichever end comes first
                frac = max(frac, elapsed / args.max_minutes)
            lr = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
            for gp in opt.param_groups:
                gp["lr"] = lr
            t0 = time.perf_counter()
            xs, ys = zip(*[training_sample(train_p[rng.integers(len(train_p))], args.crop_n, args.crop_mm, rng,
                                           window, aug) for _ in range(args.batch)])
            x = torch.from_numpy(np.stack(xs))[:, None].to(device)
            y = torch.from_numpy(np.stack(ys).astype(np.int64))[:, None].to(device)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            step_times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if not losses:
            break
        net.eval()
        dices = [dice(predict(net, pc.image, g, window, device), lab) for pc, g, lab in val_items]
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices)) if dices
               else float("nan")}
        history.append(rec)
        improved = not dices or rec["val_dice"] > best
        if improved:
            best = rec["val_dice"] if dices else best
            torch.save({"state_dict": net.state_dict(), "epoch": epoch + 1, "history": history}, out / "unet_laa.pt")
        tqdm.write(f"epoch {epoch + 1}: loss {rec['train_loss']:.3f}, val Dice {rec['val_dice']:.3f}"
                   f"{' (best)' if improved else ''}", file=sys.stderr)
        if args.max_minutes and (time.perf_counter() - t_train) / 60.0 >= args.max_minutes:
            break
    best_state = torch.load(out / "unet_laa.pt", weights_only=True)
    net.load_state_dict(best_state["state_dict"])
    info = {"history": history, "best_epoch": best_state["epoch"], "steps": step, "train_s": time.perf_counter() - t_train,
            "median_step_s": float(np.median(step_times)) if step_times else float("nan"),
            "params": sum(p.numel() for p in net.parameters())}
    return net.eval(), info


def oracle_rows(cases, args) -> list[dict]:
    """The same surface pipeline on the *ground-truth* labels of the seed-centred crop: the best any
    labelmap on this grid can score (the discretisation floor of the U-Net approach)."""
    from accuracy import metric_row

    from NUDFCore.crop import CropGeometry

    rows = []
    for case in cases:
        spacing = float(np.mean(case.load_volume().spacing))
        t0 = time.perf_counter()
        geom = CropGeometry(case.seed_lps, args.crop_mm, args.crop_n)
        labels = crop_labels(lumen_field(case, args.beyond_ostium_mm), geom).astype(np.float32)
        mesh = probability_surface(labels, geom, case.ostium_center_lps, case.ostium_normal_lps)
        rows.append(metric_row(case, mesh, spacing, time.perf_counter() - t0))
    return rows


def evaluate_unet(net, cases, args, device) -> list[dict]:
    from accuracy import metric_row

    from NUDFCore.crop import HUWindow

    rows = []
    for case in cases:
        volume = case.load_volume()
        spacing = float(np.mean(volume.spacing))
        mesh, wall = segment_case(net, case, volume, args.crop_n, args.crop_mm, HUWindow(), device)
        if mesh is None:
            rows.append({"case": case.name, "morphology": case.meta.get("morphology", "?"), "spacing": spacing,
                         "error": "no surface (probability never crosses 0.5 on the LAA side)"})
            print(f"{case.name}: FAILED (no surface)", file=sys.stderr)
            continue
        rows.append(metric_row(case, mesh, spacing, wall))
        print(f"{case.name} ({rows[-1]['morphology']}): MSD {rows[-1]['msd']:.3f} mm "
              f"({rows[-1]['msd'] / spacing:.2f} vox), HD95 {rows[-1]['hd95']:.2f} mm, {wall:.1f} s", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------------------ memory
def measure(spec: dict) -> dict:
    """One memory figure, meant to run alone in a fresh process (``--_measure``)."""
    import torch

    torch.set_num_threads(int(spec.get("threads", 2)))
    device = torch.device("cuda" if torch.cuda.is_available() and spec.get("device", "auto") != "cpu" else "cpu")
    gen = torch.Generator().manual_seed(0)
    kind = spec["kind"]
    if kind.startswith("unet"):
        import monai.networks.nets  # noqa: F401  (import cost belongs to the baseline, not the figure)
    import NUDFCore.infer  # noqa: F401
    from NUDFCore.model import NUDFNet, load_checkpoint

    result: dict = {}
    if kind == "unet_train":
        from monai.losses import DiceCELoss

        n = spec["n"]
        net = build_unet().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.randn(1, 1, n, n, n, generator=gen).to(device)
        y = (torch.rand(1, 1, n, n, n, generator=gen) > 0.9).long().to(device)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        before = _reset(device)
        t0 = time.perf_counter()
        for _ in range(2):  # the second step holds Adam's state too
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    elif kind == "unet_infer":
        n = spec["n"]
        net = build_unet().to(device).eval()
        x = torch.randn(1, 1, n, n, n, generator=gen).to(device)
        before = _reset(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            torch.softmax(net(x), dim=1)[:, 1].cpu()
    elif kind == "nudf_train":
        model = load_checkpoint(spec["model"], device="cpu")
        net = NUDFNet(model.config).to(device).train()
        n = net.config.crop_n
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.randn(1, 1, n, n, n, generator=gen).to(device)
        pts = (torch.rand(1, spec["points"], 3, generator=gen) * 2 - 1).to(device)
        d = torch.rand(1, spec["points"], generator=gen).to(device) * 5
        before = _reset(device)
        t0 = time.perf_counter()
        for _ in range(2):
            loss = (net(x, pts) - d).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    elif kind == "nudf_segment":
        from NUDFCore.data import load_case
        from NUDFCore.infer import SegmentOptions, segment

        case = load_case(spec["case"])
        ct = case.load_volume()
        model = load_checkpoint(spec["model"], device=device)
        before = _reset(device)
        t0 = time.perf_counter()
        r = segment(ct, seed_lps=case.seed_lps, model=model,
                    options=SegmentOptions(resolution_mm=spec["resolution"], device=str(device),
                                           chunk_size=spec.get("chunk")))
        result["n_queries"] = r.quality["n_queries"]
    else:
        raise ValueError(f"unknown measurement {kind!r}")
    from memory import peak_rss_mb

    result.update({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "before_mb": before})
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def _reset(device) -> float:
    """Start a measurement: reset the RSS peak (and the GPU's), return the RSS now."""
    import torch

    from memory import reset_peak, rss_mb

    reset_peak()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    return rss_mb()


def measure_in_subprocess(spec: dict, timeout: float = 900) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_measure", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {p.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def memory_table(args, test_case_dir: Path | None) -> str:
    """Peak memory of U-Net and NUDF, train step and inference, each measured in a fresh process."""
    rows = []
    crop_mm = args.crop_mm

    def add(method, task, grid, spec):
        r = measure_in_subprocess(dict(spec, threads=args.threads, device=args.device))
        print(f"memory {method} {task} {grid}: {r}", file=sys.stderr)
        rows.append((method, task, grid, r))

    for n in args.mem_train_grids:
        add("U-Net", "train step (batch 1, Adam)", f"{n}³ ({crop_mm / (n - 1):.2f} mm)", {"kind": "unet_train", "n": n})
    for n in args.mem_infer_grids:
        add("U-Net", "inference (forward + softmax)", f"{n}³ ({crop_mm / (n - 1):.2f} mm)",
            {"kind": "unet_infer", "n": n})
    model = args.nudf_model
    if model and Path(model).is_file():
        from NUDFCore.model import read_checkpoint

        data = read_checkpoint(model)
        cfg = data["config"]
        tc = (data.get("extra") or {}).get("train_config") or {}
        pts = int(tc.get("points", 4000))
        n = int(cfg["crop_n"])
        add("NUDF", f"train step (batch 1, {pts} points, Adam)", f"{n}³ ({cfg['crop_size_mm'] / (n - 1):.2f} mm)",
            {"kind": "nudf_train", "model": str(model), "points": pts})
        if test_case_dir is not None:
            for res in args.nudf_resolutions:
                add("NUDF", "inference (segment: encoder + chunked decoder + meshing)",
                    f"{n}³ encoder, {res} mm surface", {"kind": "nudf_segment", "model": str(model),
                                                         "case": str(test_case_dir), "resolution": res})
            res = min(args.nudf_resolutions)
            add("NUDF", f"inference, decoder chunk fixed at {args.small_chunk} queries (rows above: segment's default chunk)",
                f"{n}³ encoder, {res} mm surface", {"kind": "nudf_segment", "model": str(model),
                                                     "case": str(test_case_dir), "resolution": res,
                                                     "chunk": args.small_chunk})
    else:
        rows.append(("NUDF", "—", "—", {"error": f"no NUDF model ({model}); pass --nudf-model"}))
    lines = ["| method | task | grid | peak RSS MB | Δ over idle process MB | peak GPU MB | s |",
             "|---|---|---|---|---|---|---|"]
    for method, task, grid, r in rows:
        if "error" in r:
            lines.append(f"| {method} | {task} | {grid} | not measured: {r['error']} | | | |")
            continue
        gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "—"
        lines.append(f"| {method} | {task} | {grid} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] - r['before_mb']:.0f} | {gpu} | {r['seconds']:.1f} |")
    # U-Net forward memory grows as n³: the grid whose forward pass needs what NUDF's inference needs
    unet_inf = [(int(g.split("³")[0]), r) for m, t, g, r in rows if m == "U-Net" and "inference" in t
                and "error" not in r]
    nudf_inf = [(g, r) for m, t, g, r in rows if m == "NUDF" and "inference" in t and "error" not in r]
    if unet_inf and nudf_inf:
        n_max, r_max = max(unet_inf, key=lambda x: x[0])
        per_voxel = max(r_max["peak_rss_mb"] - r_max["before_mb"], 1e-3) / n_max ** 3
        lines.append("")
        for g, r in nudf_inf:
            n_eq = ((r["peak_rss_mb"] - r["before_mb"]) / per_voxel) ** (1 / 3)
            lines.append(f"At NUDF's inference memory ({g}: Δ {r['peak_rss_mb'] - r['before_mb']:.0f} MB) a U-Net "
                         f"forward pass fits a ≈{n_eq:.0f}³ grid ({crop_mm / max(n_eq - 1, 1):.2f} mm voxels), from "
                         f"its measured {per_voxel * 2**20:.0f} B/voxel at {n_max}³.")
    lines.append("")
    lines.append("Each row ran alone in a fresh Python process (same imports: torch, MONAI, NUDFCore/VTK). "
                 "Peak RSS is the process's `VmHWM`, reset right before the task "
                 "(`ru_maxrss` would include the parent's memory, see benchmarks/memory.py); Δ is the peak's growth "
                 "over the RSS right before the task (libraries loaded, model built, inputs allocated). Train steps: two steps (so Adam's state is allocated) on "
                 "random inputs of the real shapes; NUDF inference: `infer.segment` on a held-out case.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def _quick_data(root: Path) -> tuple[Path, Path]:
    from NUDFCore import phantom

    train, test = root / "train", root / "test"
    for i, morph in enumerate(phantom.MORPHOLOGIES):
        target = (train if i < 2 else test) / f"case_{morph}"
        phantom.write_case(phantom.generate_case(91_000 + i, size="compact", morphology=morph), target)
    return train, test


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="training cases (the NUDF training folder; same val split)")
    p.add_argument("--test", type=Path, help="held-out cases to evaluate")
    p.add_argument("--out", type=Path, default=None, help="folder for unet_laa.pt and results (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="tiny plumbing run: 32³, few steps, small phantoms")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="training time budget: stop (and finish the cosine schedule) when it is spent")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop-n", type=int, default=64)
    p.add_argument("--crop-mm", type=float, default=70.0)
    p.add_argument("--beyond-ostium-mm", type=float, default=3.0)
    p.add_argument("--val-fraction", type=float, default=0.125)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--nudf-model", default=None, help="NUDF checkpoint for the memory comparison "
                   "(default: the bundled model if present)")
    p.add_argument("--nudf-resolutions", type=float, nargs="*", default=[0.5, 0.25])
    p.add_argument("--small-chunk", type=int, default=8192, help="decoder chunk of the low-memory NUDF row")
    p.add_argument("--mem-train-grids", type=int, nargs="*", default=None)
    p.add_argument("--mem-infer-grids", type=int, nargs="*", default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true", help="skip training/evaluation")
    p.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._measure:
        print(json.dumps(measure(json.loads(args._measure))))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from NUDFCore.data import list_cases, split_cases
    from NUDFCore.model import resolve_device

    device = resolve_device(args.device)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="unet_baseline_"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        if args.data is None or args.test is None:
            args.data, args.test = _quick_data(args.out / "phantoms")
        args.crop_n, args.epochs, args.steps = 32, 1, 3
        args.mem_train_grids = args.mem_train_grids or [32]
        args.mem_infer_grids = args.mem_infer_grids or [32, 48]
        args.nudf_resolutions = [1.0]
    if args.data is None or args.test is None:
        p.error("give --data and --test (or --quick)")
    if args.nudf_model is None:
        try:
            from NUDFCore.infer import default_model_path

            args.nudf_model = str(default_model_path())
        except Exception:  # no bundled model: the NUDF rows say so
            args.nudf_model = None
    args.mem_train_grids = args.mem_train_grids or [args.crop_n]
    args.mem_infer_grids = args.mem_infer_grids or [args.crop_n, 144, 280]

    command = "python benchmarks/unet_baseline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sections = [f"Command: `{command}`", f"Machine: {machine()}", ""]
    test_cases = list_cases(args.test)
    if not args.memory_only:
        from accuracy import table

        train_cases, val_cases = split_cases(list_cases(args.data), args.val_fraction, seed=args.seed)
        net, info = train_unet(args, train_cases, val_cases, device)
        rows = evaluate_unet(net, test_cases, args, device)
        (args.out / "unet_rows.json").write_text(json.dumps({"rows": rows, "train": info}, indent=2))
        sections += [
            f"### 3D U-Net on {len(test_cases)} held-out cases",
            "",
            f"MONAI UNet channels {UNET_CHANNELS}, strides {UNET_STRIDES}, 2 residual units, instance norm, "
            f"{info['params'] / 1e6:.2f} M parameters; crop {args.crop_mm:.0f} mm on {args.crop_n}³ "
            f"({args.crop_mm / (args.crop_n - 1):.2f} mm voxels); trained on {len(train_cases)} cases "
            f"({len(val_cases)} for validation, split seed {args.seed}), {info['steps']} steps (planned "
            f"{args.epochs}×{args.steps}{f', budget {args.max_minutes:g} min' if args.max_minutes else ''}) of batch "
            f"{args.batch}, Dice+CE, Adam lr {args.lr} (cosine), seed {args.seed}; {info['train_s'] / 60:.1f} min "
            f"({info['median_step_s']:.2f} s/step median), best epoch {info['best_epoch']} by validation Dice "
            f"({', '.join(format(h['val_dice'], '.3f') for h in info['history'])}). Surface = marching cubes at p = 0.5, "
            "clipped at the ostium plane, largest component. s/case: crop → surface (two crops).",
            "",
            table(rows),
            "",
            f"Floor of the labelmap approach: the same surface pipeline on the ground-truth labels of the "
            f"seed-centred {args.crop_n}³ crop (no network):",
            "",
            table(oracle_rows(test_cases, args)),
            "",
        ]
    if not args.no_memory:
        sections += ["### Peak memory, U-Net vs NUDF", "", memory_table(args, test_cases[0].case_dir), ""]
    text = "\n".join(sections)
    print("\n" + text)
    (args.out / "results_unet.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
