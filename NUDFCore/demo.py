"""The demo behind ``make demo``: phantom → segmentation → STL, ground-truth comparison and pictures.

It shows the whole product on data with an exact answer. With no bundled model it trains a small
demonstration model on the demo phantom itself and says so: such a model shows the pipeline working end to
end, not how well NUDF generalises to unseen scans.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import CheckpointError, InputError

#: A file marking a folder as the demo's own, so a re-run may replace what an earlier run wrote there.
MARKER = ".nudf-demo"


@dataclass
class DemoResult:
    case_dir: Path
    model_path: Path
    model_trained_by_demo: bool
    mesh_path: Path
    metrics_path: Path
    pictures: list[Path] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def _claim_folder(out: Path) -> None:
    """Use ``out`` only if it is new, empty, or an earlier demo's: never clobber someone else's files."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder.")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(
            f"{out} already holds files that the demo did not write; choose another --out folder."
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("Written by `nudf demo`; a new demo run may replace the files here.\n")


def run_demo(
    out: str | Path,
    *,
    seed: int = 7,
    size: str = "full",
    model: str | Path | None = None,
    train_steps: int = 250,
    device: str = "auto",
    resolution_mm: float = 0.5,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> DemoResult:
    """Run the demo into ``out`` and return where everything went."""
    from . import phantom, report
    from .data import list_cases
    from .infer import SegmentOptions, default_model_path, segment
    from .io import write_mesh
    from .metrics import surface_metrics

    out = Path(out)
    _claim_folder(out)
    data_root = out / "phantom"
    case_dir = data_root / "case000"
    # 1. the phantom (kept between runs: it is deterministic in the seed)
    meta_path = case_dir / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("seed") == seed:
        log(f"[1/4] Reusing the phantom in {case_dir}")
    else:
        t0 = time.perf_counter()
        log(f"[1/4] Generating a synthetic cardiac CTA phantom (seed {seed}, size {size})...")
        phantom.write_case(phantom.generate_case(seed, size=size), case_dir, overwrite=True)
        log(f"      done in {time.perf_counter() - t0:.0f} s")
    case = list_cases(data_root)[0]
    log(f"      CT:                {case.ct_path}")
    log(f"      ground-truth mesh: {case.mesh_path}  (LPS, open at the ostium)")
    log(f"      metadata:          {case_dir / 'meta.json'} (morphology: {case.meta.get('morphology')})")

    # 2. the model: given, bundled, or a demonstration model trained here
    trained_here = False
    if model is None:
        try:
            model_path = default_model_path()
            log(f"[2/4] Using the bundled model {model_path}")
        except CheckpointError:
            model_path = out / "demo_model.pt"
            trained_here = True
            if model_path.exists():
                log(f"[2/4] Reusing the demonstration model {model_path}")
            else:
                log("[2/4] No bundled model found: training a small DEMONSTRATION model on this phantom "
                    f"({train_steps} steps on the CPU, a few minutes). It has seen only this case, so the result "
                    "below shows the pipeline working, not accuracy on unseen scans.")
                from .train import TrainConfig, train

                steps = max(10, train_steps // 5)
                cfg = TrainConfig(data=data_root, out=model_path, preset="small", epochs=5, steps_per_epoch=steps,
                                  points=3000, lr=2e-3, val_fraction=0.0, sample_points=100_000, val_points=10_000,
                                  seed=seed, device=device)
                t0 = time.perf_counter()
                model_path = Path(train(cfg, progress=progress)["best"])
                log(f"      trained in {time.perf_counter() - t0:.0f} s -> {model_path}")
    else:
        model_path = Path(model)
        log(f"[2/4] Using the model {model_path}")

    # 3. segment from the phantom's seed point
    log(f"[3/4] Segmenting the LAA from the seed point ({', '.join(f'{v:.1f}' for v in case.seed_lps)}) mm LPS...")
    ct = case.load_volume()
    result = segment(ct, seed_lps=case.seed_lps, model=model_path,
                     options=SegmentOptions(resolution_mm=resolution_mm, device=device))
    mesh_path = write_mesh(result.mesh_lps, out / "laa.stl", frame="lps", overwrite=True)
    log(f"      {mesh_path}: {result.summary()}")

    # 4. compare with the ground truth and draw it
    log("[4/4] Comparing with the exact ground truth and drawing pictures...")
    gt = case.load_mesh()
    m = surface_metrics(result.mesh_lps, gt, spacing_mm=float(min(ct.spacing)), case=case.case_dir.name)
    metrics_path = out / "metrics.json"
    m.to_json(metrics_path, overwrite=True)
    pictures = [
        report.render_slice_overlay(ct, result.mesh_lps, out / "slice_overlay.png", gt_mesh_lps=gt,
                                    through_lps=case.seed_lps, overwrite=True),
        report.render_3d(result.mesh_lps, out / "render_3d.png", gt_mesh_lps=gt, overwrite=True),
    ]
    log(f"      surface distance to ground truth: mean {m.msd_mm:.2f} mm, 95% {m.hd95_mm:.2f} mm, "
        f"max {m.hausdorff_mm:.2f} mm (CT voxel {min(ct.spacing):.2f} mm)")
    log(f"      metrics: {metrics_path}")
    for p in pictures:
        log(f"      picture: {p}")
    if trained_here:
        log("Note: the model above was trained by the demo on this very phantom; see MODEL_CARD.md for the "
            "bundled model when it is present.")
    return DemoResult(case.case_dir, model_path, trained_here, mesh_path, metrics_path, pictures, m.to_dict())
