"""Segment the LAA: a CT and one seed point in, an open LAA surface mesh (LPS mm) out.

Pipeline: validate the input (a CT in HU, a seed inside the body) → crop a cube around the seed → encode it
once → evaluate the network's unsigned distance field coarse-to-fine only near the surface → mesh the
field as a single open sheet (pseudo-sign marching cubes) → keep the sheet around the seed → optional
smoothing/decimation. A clinician's seed need not be at the LAA centre, so when the first surface's centre
lies away from the crop centre the crop is re-centred on it and the field evaluated again (two passes).
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import vtk

from .crop import CropGeometry, HUWindow, extract_crop, subvolume_around
from .errors import CheckpointError, InputError, SegmentationError
from .frames import to_lps
from .io import Volume, polydata_points, polydata_triangles
from . import meshtools
from . import quality as quality_checks

ProgressFn = Callable[[str, float], None]

#: The bundled model is package data (``NUDFCore/models/``): the same lookup works in the source tree, a
#: wheel install and the Slicer extension (which installs NUDFCore with its models folder).
_MODEL_FILE = "nudf_laa.pt"


def default_model_path() -> Path:
    """The model used when none is given: ``$NUDF_MODEL`` if set, else the bundled one.

    Raises :class:`CheckpointError` with the places searched when there is none (weights are never
    downloaded at run time).
    """
    env = os.environ.get("NUDF_MODEL")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise CheckpointError(f"NUDF_MODEL points to {p}, which is not a file.")
        return p
    from importlib.resources import files

    bundled = files(__package__).joinpath("models", _MODEL_FILE)
    if isinstance(bundled, os.PathLike) and bundled.is_file():  # a zipped install has no file path for torch
        return Path(bundled)
    raise CheckpointError(
        f"No model given and no bundled model found (looked for {bundled}). "
        "Pass --model / model=..., or set NUDF_MODEL."
    )


# ------------------------------------------------------------------------------------------- options
@dataclass
class SegmentOptions:
    """Knobs of :func:`segment`; the defaults suit a cardiac CTA."""

    resolution_mm: float = 0.25
    """Final grid resolution of the surface extraction (mm)."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""
    smoothing: float = 0.0
    """0 = off; 0..1 = strength of windowed-sinc smoothing (does not shrink the surface)."""
    decimate: float = 0.0
    """Fraction of triangles to remove (0 = off, at most 0.9)."""
    crop_center_lps: np.ndarray | None = None
    """Override the crop centre (e.g. the centre of a user-drawn ROI); disables re-centring."""
    crop_size_mm: float | None = None
    """Override the crop size; None = the model's training crop size (recommended)."""
    two_pass: bool = True
    """Re-centre the crop on the first pass's surface and evaluate again when it is off-centre."""
    coarse_resolution_mm: float | None = None
    """First level of the adaptive evaluation (default: the meshing module's, ≤ 2 mm)."""
    field_tolerance_mm: float = 1.0
    """How far (mm) above its own floor a network's distance valley may lie and still count as surface.

    An exact field is 0 on the surface; a network's is not, and less so where it is unsure (near the
    ostium, thin lobes). Pseudo-sign meshing with an exact-field tolerance (MeshUDF: ~h/6) punched 30–40 mm
    holes into phantom segmentations; 1 mm closed them without adding false surface (measured at 0.25 and
    0.5 mm on held-out phantoms)."""
    exact_gradients: bool = False
    """Take ∇u by autograd through the network instead of from the evaluation lattice. On held-out phantoms
    it made the surface stage about 2× slower for a mean surface distance within ~0.015 mm of the lattice's."""
    min_component_fraction: float = 0.02
    """Drop mesh fragments smaller than this fraction of the main sheet's area."""
    chunk_size: int | None = None
    """Decoder batch size; None = chosen from the free memory."""
    progress: ProgressFn | None = None
    cancel: Callable[[], bool] | None = None

    def check(self) -> None:
        if not (0.05 <= float(self.resolution_mm) <= 5.0):
            raise InputError(f"resolution_mm must be between 0.05 and 5 mm; got {self.resolution_mm}.")
        if not (0.0 <= float(self.smoothing) <= 1.0):
            raise InputError(f"smoothing must be between 0 and 1; got {self.smoothing}.")
        if not (0.0 < float(self.field_tolerance_mm) <= 5.0):
            raise InputError(f"field_tolerance_mm must be in (0, 5] mm; got {self.field_tolerance_mm}.")
        if not (0.0 <= float(self.decimate) <= 0.9):
            raise InputError(f"decimate must be between 0 and 0.9; got {self.decimate}.")
        if self.crop_size_mm is not None and not (20.0 <= float(self.crop_size_mm) <= 300.0):
            raise InputError(f"crop_size_mm must be between 20 and 300 mm; got {self.crop_size_mm}.")


@dataclass
class SegmentationResult:
    """What :func:`segment` returns: the mesh (LPS mm) and how it was obtained."""

    mesh_lps: vtk.vtkPolyData
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    quality: dict = field(default_factory=dict)
    seed_lps: np.ndarray | None = None
    crop_center_lps: np.ndarray | None = None

    @property
    def warnings(self) -> list[str]:
        """Plain-language doubts about the result (completeness, plausibility; see NUDFCore.quality)."""
        return list(self.quality.get("warnings", []))

    def summary(self) -> str:
        q = self.quality
        conf = f", mean confidence {q['mean_confidence']:.2f}" if "mean_confidence" in q else ""
        return (
            f"{self.timings.get('total', 0.0):.1f} s, {q.get('n_vertices', 0)} vertices, "
            f"{q.get('n_faces', 0)} faces, {q.get('boundary_loops', 0)} boundary loop(s), "
            f"mean predicted distance {q.get('mean_predicted_distance_mm', float('nan')):.3f} mm{conf}"
        )


class _Stages:
    """Timings, progress reporting and cancellation in one place."""

    def __init__(self, progress: ProgressFn | None, cancel: Callable[[], bool] | None) -> None:
        self.timings: dict[str, float] = {}
        self._progress = progress
        self._cancel = cancel

    def report(self, stage: str, fraction: float) -> None:
        self.check_cancel()
        if self._progress is not None:
            self._progress(stage, float(min(max(fraction, 0.0), 1.0)))

    def check_cancel(self) -> None:
        if self._cancel is not None and self._cancel():
            from .errors import SegmentationCancelled

            raise SegmentationCancelled("Segmentation cancelled.")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.report(name, 0.0)
        t0 = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        self.report(name, 1.0)


# ------------------------------------------------------------------------------------------- checks
#: Plausibility limits for a CT in Hounsfield units.
_HU_AIR_MAX = -500.0  # a chest CT always contains lung/air darker than this
_HU_CONTRAST_MIN = 100.0  # and tissue/contrast brighter than this
_SEED_AIR_HU = -300.0  # a seed darker than this (mean of its neighbourhood) is in lung/air
#: A network whose distances never fall below this near the seed has not found a surface there.
_MAX_FIELD_FLOOR_MM = 1.0
#: A seed farther than this outside the (capped) surface found: the surface is not the LAA the seed is in.
_SEED_REFUSE_MM = 5.0
#: The second view for the confidence: the crop shifted by these fractions of its voxel (see NUDFCore.quality).
_SECOND_VIEW_VOXELS = np.array([0.37, -0.41, 0.43])
#: A seed closer than this to the image border has part of its LAA cut off (measured to the outer voxel faces).
MIN_SEED_EDGE_MM = 10.0
#: The share of the network's crop cube that must lie inside the image (outside reads as air to the network).
MIN_CROP_INSIDE = 0.5


def _fmt_point(values) -> str:
    """A point for a message: 0.1 mm, and e-notation for absurd values (1e308 stays 1e+308, not inf)."""
    return "[" + ", ".join(f"{v:.1f}" if abs(v) < 1e6 else f"{v:.3g}" for v in np.asarray(values, float).ravel()) + "]"


def _blank_end_slices(arr: np.ndarray) -> int:
    """How many of the last slices (highest k: the end of the file) hold one single value.

    A truncated file that a reader zero-filled (SimpleITK does so for NIfTI, Slicer loads through it)
    ends in such slices; a real CT has noise in every slice.
    """
    n = 0
    for k in range(arr.shape[0] - 1, -1, -1):
        if arr[k].min() != arr[k].max():
            break
        n += 1
    return n


def check_ct_plausible(ct: Volume) -> None:
    """Refuse images that cannot be a CT in HU (an MR image, a mask, a normalised array), and damaged
    ones: non-finite voxels, blank slices at the end of the file (a truncated, zero-filled file)."""
    arr = ct.array
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad == arr.size:
            raise SegmentationError("Every voxel of this image is NaN or infinite: it holds no CT data.")
        if bad:
            raise SegmentationError(
                f"{bad} voxels of this image are NaN or infinite ({100.0 * bad / arr.size:.2g} %): a damaged or "
                "wrongly converted CT. Replace them (e.g. by -1024 HU) or export the CT again.")
    blank = _blank_end_slices(arr)
    if 0 < blank < arr.shape[0]:
        raise SegmentationError(
            f"The last {blank} of the {arr.shape[0]} slices of this CT (k = {arr.shape[0] - blank}..{arr.shape[0] - 1}) "
            f"all hold the single value {float(arr[-1].flat[0]):g}: the file looks truncated and zero-filled by its "
            "reader. Copy or export the CT again (or crop the blank slices away).")
    step = max(1, int(round((arr.size / 2e6) ** (1 / 3))))
    sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float32)
    p1, p99 = np.percentile(sample, [1, 99])
    if p1 == p99:
        raise SegmentationError(f"This image is blank (its voxels are all about {p1:g}): it holds no CT data.")
    if not (p1 <= _HU_AIR_MAX and p99 >= _HU_CONTRAST_MIN):
        raise SegmentationError(
            "This image does not look like a CT in Hounsfield units (1st/99th percentiles "
            f"{p1:.0f}/{p99:.0f}; a chest CT has air below {_HU_AIR_MAX:.0f} HU and tissue above "
            f"{_HU_CONTRAST_MIN:.0f} HU). NUDF segments contrast-enhanced cardiac CT only."
        )


def _seed_hu(ct: Volume, seed_lps: np.ndarray) -> float:
    """Mean HU in a ~3 mm neighbourhood of the seed (robust to noise)."""
    ijk = np.round(ct.lps_to_index(seed_lps)).astype(int)
    r = np.maximum(1, np.round(1.5 / ct.spacing).astype(int))
    size = np.array(ct.size_ijk)
    lo = np.clip(ijk - r, 0, size - 1)
    hi = np.clip(ijk + r + 1, 1, size)
    block = ct.array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    return float(np.mean(block)) if block.size else float("nan")


def resolve_seed(ct: Volume, seed_lps=None, seed_ras=None) -> np.ndarray:
    """The seed in LPS, checked to lie inside the CT and inside the body (not in air)."""
    if (seed_lps is None) == (seed_ras is None):
        raise InputError("Give exactly one seed: seed_lps=... or seed_ras=... (the frame must be explicit).")
    raw = seed_lps if seed_lps is not None else seed_ras
    try:
        seed = to_lps(np.asarray(raw, dtype=np.float64).reshape(3), "lps" if seed_lps is not None else "ras")
    except (ValueError, TypeError) as exc:
        raise InputError(f"The seed must be three numbers (x, y, z in mm); got {raw!r}.") from exc
    if not np.all(np.isfinite(seed)):
        raise InputError(f"The seed must be finite; got {_fmt_point(np.asarray(raw, float))}.")
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 / 0.5 mm overflows: outside, not a warning
        inside = bool(ct.contains_lps(seed))
    if not inside:
        lo, hi = ct.bounds_lps()
        raise InputError(
            f"The seed {_fmt_point(seed)} (LPS) lies outside the CT volume "
            f"(LPS bounds {_fmt_point(lo)} .. {_fmt_point(hi)})."
        )
    hu = _seed_hu(ct, seed)
    if hu < _SEED_AIR_HU:
        raise SegmentationError(
            f"The seed lies in air or lung (mean {hu:.0f} HU around it), not in the heart: place it inside "
            "the contrast-filled left atrial appendage."
        )
    return seed


def _face_name(ct: Volume, axis: int, high: bool) -> str:
    """'the i = 0 face (right)': a face of the voxel grid, with the anatomical side it faces."""
    outward = ct.direction_lps[:, axis] * (1.0 if high else -1.0)
    a = int(np.argmax(np.abs(outward)))
    side = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))[a][int(outward[a] > 0)]
    return f"the {'ijk'[axis]} = {ct.size_ijk[axis] - 1 if high else 0} face ({side})"


def check_seed_clearance(ct: Volume, seed_lps: np.ndarray, crop_center_lps: np.ndarray, crop_size_mm: float) -> None:
    """Refuse a seed on or near the image border, or a crop that lies mostly outside the image.

    The network reads the outside of the image as air: with the seed on an edge it finds a shred of surface
    far from the LAA and the run "succeeds". Raises :class:`InputError` giving the distance to the edge.
    """
    ijk = ct.lps_to_index(np.asarray(seed_lps, dtype=np.float64))
    n = np.array(ct.size_ijk, dtype=np.float64)
    low, high = (ijk + 0.5) * ct.spacing, (n - 0.5 - ijk) * ct.spacing  # mm to the outer voxel faces
    axis, is_high = min(((a, h) for a in range(3) for h in (False, True)), key=lambda ah: (high if ah[1] else low)[ah[0]])
    edge_mm = float((high if is_high else low)[axis])
    half = 0.5 * float(crop_size_mm)
    t = (np.arange(12) + 0.5) / 12.0 * 2.0 - 1.0  # 12^3 cell centres of the crop cube
    grid = np.stack(np.meshgrid(t, t, t, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = float(np.mean(ct.contains_lps(np.asarray(crop_center_lps, dtype=np.float64) + half * grid)))
    if edge_mm < MIN_SEED_EDGE_MM or inside < MIN_CROP_INSIDE:
        raise InputError(
            f"The seed is {edge_mm:.1f} mm from the edge of the image ({_face_name(ct, axis, is_high)}) and "
            f"{100 * inside:.0f} % of the {crop_size_mm:.0f} mm cube the network reads lies inside it; NUDF needs "
            f"the seed at least {MIN_SEED_EDGE_MM:.0f} mm inside and {100 * MIN_CROP_INSIDE:.0f} % of the cube in "
            "the image. Place the seed inside the LAA, or use a CT whose field of view contains the whole LAA.")


# ------------------------------------------------------------------------------------------- memory
def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB).

    Linux: VmHWM from /proc (ru_maxrss would also count a parent's peak carried across exec); elsewhere
    ru_maxrss or psutil.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20


def _choose_chunk(device, n_features: int) -> int:
    """Decoder batch size from free memory: ~10 % of it for the per-query activations."""
    import psutil
    import torch

    per_query = max(1, n_features) * 4 * 6  # features + a few hidden layers, float32, with slack
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    # Larger chunks barely speed up a CPU (measured: 8k-query chunks cut inference memory from 1.25 GB to
    # 0.41 GB at 0.25 mm) but do help a GPU.
    cap = 262_144 if device.type == "cuda" else 16_384
    return int(np.clip(0.1 * free / per_query, 4096, cap))


# ------------------------------------------------------------------------------------------- field
class NetworkField:
    """The network's unsigned distance field around one crop, callable on LPS points (numpy in/out).

    The crop is encoded once; every call only runs the pointwise decoder, in chunks — through
    :class:`NUDFCore.decoder.FastDecoder` (the same numbers, ~4× faster on a CPU) when the network's decoder
    is the plain stack it mirrors, else through :meth:`NUDFNet.query`.
    """

    def __init__(self, model, volume_sitk, geometry: CropGeometry, window: HUWindow, device, chunk: int):
        import torch

        from .decoder import fast_decoder

        self.model = model
        self.geometry = geometry
        self.device = device
        self.chunk = chunk
        crop = extract_crop(volume_sitk, geometry, window)
        with torch.no_grad():
            t = torch.from_numpy(crop)[None, None].to(device)
            self.features = model.encode(t)
        self.fast = fast_decoder(model, self.features)

    def _norm(self, points_lps: np.ndarray):
        import torch

        q = self.geometry.lps_to_normalized(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3))
        return torch.from_numpy(q.astype(np.float32))[None].to(self.device)

    def udf(self, points_lps: np.ndarray) -> np.ndarray:
        if len(points_lps) == 0:
            return np.zeros(0)
        if self.fast is not None:
            u = self.fast.query(self._norm(points_lps)[0], chunk_size=self.chunk)
            return u.float().cpu().numpy().astype(np.float64)
        u = self.model.query(self.features, self._norm(points_lps), chunk_size=self.chunk)
        return u[0].detach().float().cpu().numpy().astype(np.float64)

    def udf_grad(self, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(points_lps) == 0:
            return np.zeros(0), np.zeros((0, 3))
        u, g = self.model.query_with_grad(self.features, self._norm(points_lps), chunk_size=self.chunk)
        u = u[0].detach().float().cpu().numpy().astype(np.float64)
        g = self.geometry.normalized_gradient_to_lps(g[0].detach().float().cpu().numpy())
        return u, g


# ------------------------------------------------------------------------------------------- segment
def load_model(model, device):
    """Accept a loaded network, a checkpoint path, or None (the default model)."""
    from .model import NUDFNet, load_checkpoint

    if model is None:
        model = default_model_path()
    if isinstance(model, (str, os.PathLike)):
        return load_checkpoint(Path(model), device=device)
    if isinstance(model, NUDFNet):
        return model.to(device).eval()
    raise InputError(f"model must be a checkpoint path or an NUDFNet; got {type(model).__name__}.")


_NO_SURFACE_HELP = (
    "Check that the seed is inside the contrast-filled LAA and that the model fits this kind of CT."
)


@contextmanager
def _no_surface_as_user_error() -> Iterator[None]:
    """Say 'no LAA surface' in the user's terms when meshing finds nothing (cancellation passes through)."""
    from .errors import SegmentationCancelled

    try:
        yield
    except SegmentationCancelled:
        raise
    except SegmentationError as exc:
        if not str(exc).startswith("No surface found"):
            raise
        raise SegmentationError(f"The network found no LAA surface around the seed ({exc}). {_NO_SURFACE_HELP}") from exc


def _surface_centre(mesh: vtk.vtkPolyData) -> np.ndarray:
    pts = polydata_points(mesh)
    tris = polydata_triangles(mesh)
    areas = meshtools.triangle_areas(pts, tris)
    cent = pts[tris].mean(axis=1)
    return (cent * areas[:, None]).sum(axis=0) / max(areas.sum(), 1e-12)


def segment(
    ct: Volume,
    *,
    seed_lps=None,
    seed_ras=None,
    model=None,
    options: SegmentOptions | None = None,
) -> SegmentationResult:
    """Segment the LAA around a seed and return its open surface (LPS mm).

    ``ct`` is a :class:`~NUDFCore.io.Volume` (from :func:`~NUDFCore.io.read_volume`, or built from an array
    and its LPS/RAS geometry); give the seed in exactly one explicit frame. ``model`` is a checkpoint path,
    a loaded network or None (the bundled/default model). Raises :class:`InputError` /
    :class:`SegmentationError` for bad input or when no trustworthy surface is found.
    """
    import torch

    from . import meshing
    from .model import resolve_device

    opts = options or SegmentOptions()
    opts.check()
    stages = _Stages(opts.progress, opts.cancel)
    t_start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    with stages.stage("check"):
        if not isinstance(ct, Volume):
            raise InputError(f"ct must be a NUDFCore.io.Volume; got {type(ct).__name__}.")
        check_ct_plausible(ct)  # first: a blank (zero-filled) slab would otherwise read as "seed in air"
        seed = resolve_seed(ct, seed_lps=seed_lps, seed_ras=seed_ras)
    with stages.stage("load model"):
        device = resolve_device(opts.device)
        net = load_model(model, device)
        cfg = net.config
        size_mm = float(opts.crop_size_mm or cfg.crop_size_mm)
        if abs(size_mm / cfg.crop_size_mm - 1.0) > 0.15:
            # the encoder learned anatomy at one physical scale: a much larger/smaller cube changes it
            raise InputError(
                f"This model was trained on {cfg.crop_size_mm:.0f} mm crops; a {size_mm:.0f} mm crop would show "
                "it anatomy at another scale. Use a crop size within 15 % of the model's, or move the crop "
                "centre instead."
            )
        window = HUWindow.from_value(cfg.hu_window)
        chunk = int(opts.chunk_size or _choose_chunk(device, cfg.feature_size))
        # one float32 region around the seed, reused by both passes
        region = subvolume_around(ct, seed[None], margin_mm=size_mm)

    centre = np.asarray(opts.crop_center_lps, dtype=np.float64).reshape(3) if opts.crop_center_lps is not None else seed
    check_seed_clearance(ct, seed, centre, size_mm)
    passes = 2 if (opts.two_pass and opts.crop_center_lps is None) else 1
    h = float(opts.resolution_mm)
    n_queries = n_grad = n_dense = 0
    mesh = None
    fieldfn: NetworkField | None = None
    known = None  # the first pass's lattice values, reused by the second when the crop did not move
    for p in range(passes):
        final = p == passes - 1
        geom = CropGeometry(centre, size_mm, cfg.crop_n)
        if fieldfn is None:
            with stages.stage("encode"):
                fieldfn = NetworkField(net, region, geom, window, device, chunk)
        margin = 2.0 * max(h, geom.spacing_mm)
        lo = geom.center_lps - geom.half_size_mm + margin
        hi = geom.center_lps + geom.half_size_mm - margin
        res = h if final else max(h, min(4 * h, 2.0))  # the first pass only locates the LAA
        stage_name = "surface" if final else "surface (first pass)"
        tol = float(opts.field_tolerance_mm)

        def _progress(sub: str, frac: float, _name=stage_name) -> None:
            stages.report(f"{_name}: {sub}", frac)

        with stages.stage(stage_name), _no_surface_as_user_error():
            mres = meshing.extract_open_surface(
                fieldfn.udf,
                fieldfn.udf_grad if opts.exact_gradients else None,
                lo,
                hi,
                res,
                coarse_resolution=(max(opts.coarse_resolution_mm, res) if opts.coarse_resolution_mm else None),
                keep_point=seed,
                min_component_fraction=opts.min_component_fraction,
                known_values=known,
                **meshing.network_field_settings(res, tol),
                progress=_progress,
                cancel=opts.cancel,
            )
        n_queries, n_grad = n_queries + mres.n_queries, n_grad + mres.n_grad_queries
        n_dense += mres.n_dense_queries
        mesh = mres.mesh
        floor = float(mres.stats.get("field_floor", 0.0))
        if floor > _MAX_FIELD_FLOOR_MM:
            raise SegmentationError(
                f"The network found no LAA surface near the seed: its smallest predicted distances are about "
                f"{floor:.2f} mm, not ~0. The model does not recognise an LAA here (wrong seed, wrong kind of "
                "image, or a model that does not fit this CT)."
            )
        if mesh is None or mesh.GetNumberOfCells() == 0:
            raise SegmentationError(f"The network found no LAA surface around the seed. {_NO_SURFACE_HELP}")
        if not final:
            # re-centre on the first (coarse) surface: the seed may sit anywhere in the LAA
            new_centre = _surface_centre(mesh)
            if np.linalg.norm(new_centre - centre) > 0.05 * size_mm:
                centre = new_centre
                fieldfn = None
            else:
                known = mres.lattice_values

    with stages.stage("post-process"):  # the seed's sheet was already kept and fragments dropped by meshing
        meshed = mesh
        if opts.smoothing > 0:
            passband = float(10 ** (-1 - 2 * opts.smoothing))  # 0.1 (light) .. 0.001 (strong)
            mesh = meshing.smooth_windowed_sinc(mesh, iterations=20, passband=passband)
        if opts.decimate > 0:
            mesh = meshing.decimate(mesh, opts.decimate)
        if mesh is not meshed:
            quality_checks.carry_slope(meshed, mesh)
    with stages.stage("quality"):
        # per-vertex confidence (NUDFCore.quality): a second view of the same anatomy, the crop shifted by a
        # fraction of a voxel along each axis
        shifted = CropGeometry(centre + _SECOND_VIEW_VOXELS * geom.spacing_mm, size_mm, cfg.crop_n)
        second = NetworkField(net, region, shifted, window, device, chunk)
        n_scored = quality_checks.score_vertices(mesh, fieldfn.udf, second.udf, moved=mesh is not meshed)
        assessment = quality_checks.assess_surface(mesh, ct, seed)
        outside = float(assessment.metrics.get("seed_outside_mm", 0.0))
        if outside > _SEED_REFUSE_MM:
            where = assessment.metrics.get("ostium_center_lps") or _surface_centre(mesh).tolist()
            raise SegmentationError(
                f"The network found no LAA surface around the seed: the surface it found lies {outside:.0f} mm from "
                f"the seed (near LPS {_fmt_point(where)}). This does not look like a seed in the left atrial "
                "appendage: place it inside the contrast-filled appendage."
            )
        u_vertices = quality_checks.point_array(mesh, quality_checks.DISTANCE_ARRAY)
        pts = polydata_points(mesh)
        quality = {
            "n_vertices": int(mesh.GetNumberOfPoints()),
            "n_faces": int(mesh.GetNumberOfCells()),
            "boundary_loops": int(assessment.metrics.get("boundary_loops", 0)),
            "area_mm2": float(assessment.metrics.get("area_mm2", 0.0)),
            "mean_predicted_distance_mm": float(np.mean(u_vertices)) if len(pts) else float("nan"),
            "max_predicted_distance_mm": float(np.max(u_vertices)) if len(pts) else float("nan"),
            **{k: v for k, v in assessment.metrics.items() if k not in ("area_mm2", "boundary_loops")},
            "warnings": [str(w) for w in assessment.warnings],
            "warning_codes": [w.code for w in assessment.warnings],
            "warning_locations_lps": [None if w.location_lps is None else [float(v) for v in w.location_lps]
                                      for w in assessment.warnings],
            "n_queries": int(n_queries + n_scored),
            "n_grad_queries": int(n_grad),
            "n_dense_queries": int(n_dense),
            "field_floor_mm": floor,
            "passes": passes,
            "device": str(device),
            "resolution_mm": h,
        }
    if mesh.GetNumberOfCells() == 0:
        raise SegmentationError("The segmentation produced no surface after clean-up.")
    stages.timings["total"] = time.perf_counter() - t_start
    peak = _peak_rss_mb()
    if device.type == "cuda":
        quality["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return SegmentationResult(
        mesh_lps=mesh,
        timings=stages.timings,
        peak_memory_mb=peak,
        quality=quality,
        seed_lps=seed,
        crop_center_lps=centre,
    )
