"""Measurement benchmark: LAA occlusion planning measurements of NUDF segmentations against the ground truth.

Not a test: it prints Markdown tables. Held-out compact phantoms are generated into --work (seeds --seed,
--seed+1, ...; existing case folders are reused), then for each case:

1. the exact GT mesh is measured (``NUDFCore.measure``) and compared with the phantom's own figures in
   meta.json (ostium long/short axis = the extents of the ostium loop along its principal in-plane axes; depth =
   the farthest surface point from the ostium plane) — a check of the measurement code on exact surfaces;
2. the model (default: the bundled one) segments the CT from the meta seed at --resolution mm and the
   segmentation is measured the same way;
3. segmentation − GT for every figure (``compare_measurements``): ostium centre distance, normal angle,
   diameters, area, depth, landing zones, volume; per case, then the mean and the worst absolute error.

    python benchmarks/measurements.py                                   # 6 phantoms, seeds 5000-5005
    python benchmarks/measurements.py --count 4 --resolution 0.25 --json rows.json
    python benchmarks/measurements.py --count 1 --picture NUDFSegmentation/Resources/Screenshots/nudf_laa_measurements.png

--picture renders one case (--picture-case) off-screen: the segmentation (translucent red) with its ostium
(yellow) and landing-zone (cyan, blue) contours and its centreline (green).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: The plane of the "placed ostium" comparison: the GT ostium plane moved this far into the LAA.
PLANE_OFFSET_MM = 1.0
OSTIUM_RGB = (255, 215, 0)
LANDING_RGB = ((0, 200, 255), (60, 90, 255))
CENTERLINE_RGB = (40, 190, 60)


def _machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    return f"{dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def make_cases(work: Path, count: int, seed: int) -> list[Path]:
    """Compact phantoms ``case_<seed>`` in ``work`` (generated once, then reused)."""
    from NUDFCore.phantom import generate_case, write_case

    dirs = []
    for s in range(seed, seed + count):
        d = work / f"case_{s}"
        if not (d / "meta.json").is_file():
            t0 = time.perf_counter()
            write_case(generate_case(s, size="compact"), d, overwrite=True)
            print(f"phantom {s}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        dirs.append(d)
    return dirs


def model_tag(model) -> str:
    """The checkpoint's file name and SHA-256 prefix (segmentations are cached per model and resolution)."""
    from NUDFCore.infer import default_model_path
    from NUDFCore.provenance import model_sha256_prefix

    path = Path(model) if model else default_model_path()
    return f"{path.name} ({model_sha256_prefix(path)})"


def _seg_file(case_dir: Path, model, resolution: float) -> Path:
    return case_dir / f"nudf_{resolution:g}mm_{model_tag(model).split('(')[1][:-1]}.vtp"


def evaluate_case(case_dir: Path, model, resolution: float, device: str) -> dict:
    from NUDFCore.infer import SegmentOptions, segment
    from NUDFCore.io import read_mesh, read_volume, write_mesh
    from NUDFCore.measure import compare_measurements, measure_laa
    from NUDFCore.metrics import surface_metrics

    meta = json.loads((case_dir / "meta.json").read_text())
    gt_mesh = read_mesh(case_dir / "laa.vtp")
    t0 = time.perf_counter()
    gt = measure_laa(gt_mesh)
    measure_s = time.perf_counter() - t0
    row = {"case": case_dir.name, "morphology": meta.get("morphology", "?"),
           "meta": {k: meta["laa"][k] for k in ("ostium_long_axis_mm", "ostium_short_axis_mm", "depth_mm", "volume_ml")},
           "gt": gt.flat_row(), "gt_warnings": gt.warnings, "measure_s": measure_s}
    seg_file = _seg_file(case_dir, model, resolution)
    if seg_file.is_file():  # cached per model and resolution (delete the file to redo it)
        seg_mesh = read_mesh(seg_file)
    else:
        result = segment(read_volume(case_dir / "ct.nii.gz"), seed_lps=meta["seed_lps"], model=model,
                         options=SegmentOptions(resolution_mm=resolution, device=device))
        seg_mesh = result.mesh_lps
        write_mesh(seg_mesh, seg_file)
    row["msd_mm"] = surface_metrics(seg_mesh, gt_mesh, n_samples=20_000).msd_mm
    try:
        seg = measure_laa(seg_mesh)
    except Exception as exc:  # a failed measurement is a result too: report it
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row.update(seg=seg.flat_row(), seg_warnings=seg.warnings, diff=compare_measurements(seg, gt))
    # a clinician's ostium: both surfaces re-cut at the GT's ostium plane moved PLANE_OFFSET_MM into the LAA
    plane = (gt.ostium.center_lps + PLANE_OFFSET_MM * gt.ostium.normal_lps, gt.ostium.normal_lps)
    try:
        seg_p, gt_p = measure_laa(seg_mesh, ostium_plane_lps=plane), measure_laa(gt_mesh, ostium_plane_lps=plane)
        row.update(plane_warnings=seg_p.warnings, diff_plane=compare_measurements(seg_p, gt_p))
    except Exception as exc:
        row["plane_error"] = f"{type(exc).__name__}: {exc}"
    return row


#: Segmentation − GT columns: (difference key, header, format).
DIFF_COLUMNS = (
    ("ostium_center_distance_mm", "ostium centre mm", "{:.2f}"),
    ("ostium_normal_angle_deg", "normal °", "{:.1f}"),
    ("ostium_max_diameter_error_mm", "max Ø mm", "{:+.2f}"),
    ("ostium_min_diameter_error_mm", "min Ø mm", "{:+.2f}"),
    ("ostium_area_derived_diameter_error_mm", "area-Ø mm", "{:+.2f}"),
    ("ostium_perimeter_derived_diameter_error_mm", "perim-Ø mm", "{:+.2f}"),
    ("depth_error_mm", "depth mm", "{:+.2f}"),
    ("landing_10mm_max_diameter_error_mm", "LZ10 max Ø mm", "{:+.2f}"),
    ("landing_12mm_max_diameter_error_mm", "LZ12 max Ø mm", "{:+.2f}"),
    ("volume_error_ml", "volume mL", "{:+.2f}"),
)


def _fmt(fmt: str, v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else fmt.format(v)


def gt_table(rows: list[dict]) -> str:
    """The GT mesh measured vs the phantom's own figures."""
    lines = ["| case | morphology | max Ø / meta long axis mm | min Ø / meta short axis mm | depth / meta mm | "
             "volume mL (meta) | s |", "|---|---|---|---|---|---|---|"]
    errs = {"max": [], "min": [], "depth": []}
    for r in rows:
        g, m = r["gt"], r["meta"]
        errs["max"].append(g["ostium_max_diameter_mm"] - m["ostium_long_axis_mm"])
        errs["min"].append(g["ostium_min_diameter_mm"] - m["ostium_short_axis_mm"])
        errs["depth"].append(g["depth_mm"] - m["depth_mm"])
        lines.append(f"| {r['case']} | {r['morphology']} | {g['ostium_max_diameter_mm']:.2f} / {m['ostium_long_axis_mm']:.2f} | "
                     f"{g['ostium_min_diameter_mm']:.2f} / {m['ostium_short_axis_mm']:.2f} | {g['depth_mm']:.2f} / "
                     f"{m['depth_mm']:.2f} | {g['volume_ml']:.2f} ({m['volume_ml']:.2f}) | {r['measure_s']:.1f} |")
    for name, fn in (("mean \\|Δ\\|", np.mean), ("worst \\|Δ\\|", np.max)):
        lines.append(f"| **{name}** | | {fn(np.abs(errs['max'])):.2f} | {fn(np.abs(errs['min'])):.2f} | "
                     f"{fn(np.abs(errs['depth'])):.2f} | | |")
    return "\n".join(lines)


def diff_table(rows: list[dict], key: str = "diff", warnings: str = "seg_warnings", error: str = "error") -> str:
    """Segmentation − GT (``rows[i][key]``), per case, then mean and worst absolute error."""
    ok = [r for r in rows if key in r]
    lines = ["| case | morphology | MSD mm | " + " | ".join(h for _, h, _ in DIFF_COLUMNS) + " | warnings |",
             "|" + "---|" * (len(DIFF_COLUMNS) + 4)]
    for r in ok:
        lines.append(f"| {r['case']} | {r['morphology']} | {r['msd_mm']:.2f} | "
                     + " | ".join(_fmt(f, r[key][k]) for k, _, f in DIFF_COLUMNS)
                     + f" | {len(r[warnings])} |")
    for name, fn in (("mean \\|err\\|", np.nanmean), ("worst \\|err\\|", np.nanmax)):
        cells = []
        for k, _, f in DIFF_COLUMNS:
            vals = np.abs([r[key][k] for r in ok], dtype=np.float64)
            cells.append(_fmt(f.replace("+", ""), fn(vals)) if np.isfinite(vals).any() else "n/a")
        msd = fn([r["msd_mm"] for r in ok]) if ok else float("nan")
        lines.append(f"| **{name}** | | {_fmt('{:.2f}', msd)} | " + " | ".join(cells) + " | |")
    failed = [r for r in rows if error in r]
    if failed:
        lines.append("")
        lines.append("Not measurable: " + "; ".join(f"{r['case']} ({r[error]})" for r in failed))
    return "\n".join(lines)


def picture(case_dir: Path, model, resolution: float, out: Path, source: str) -> Path:
    """The README picture: one case's surface (``source``: "seg" = the segmentation at its learned cut, "gt" = the
    exact GT mesh) with its ostium (yellow) and landing-zone (cyan, blue) contours and its centreline (green),
    seen side-on: perpendicular to the ostium normal and to the ostium → apex direction."""
    from NUDFCore.io import read_mesh
    from NUDFCore.measure import measure_laa
    from NUDFCore.report import render_3d

    mesh = read_mesh(_seg_file(case_dir, model, resolution) if source == "seg" else case_dir / "laa.vtp")
    m = measure_laa(mesh)

    def closed(p: np.ndarray) -> np.ndarray:
        return np.vstack([p, p[:1]])

    curves = [(closed(m.ostium.contour_lps), OSTIUM_RGB), (m.centerline_lps, CENTERLINE_RGB)]
    curves += [(closed(z.contour_lps), rgb) for z, rgb in zip(m.landing_zones, LANDING_RGB) if z is not None]
    view = np.cross(m.ostium.normal_lps, m.apex_lps - m.ostium.center_lps)
    if np.linalg.norm(view) < 1e-6:
        view = np.cross(m.ostium.normal_lps, [0.0, 0.0, 1.0])
    view = view / np.linalg.norm(view) - 0.35 * m.ostium.normal_lps  # a little from the atrium's side
    return render_3d(mesh, out, size=(800, 600), view_direction_lps=view, curves_lps=curves, mesh_opacity=0.45,
                     overwrite=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the phantoms and segmentations (default: <tmp>/nudf_measure_<seed>)")
    p.add_argument("--count", type=int, default=6, help="number of held-out phantoms (default 6)")
    p.add_argument("--seed", type=int, default=5000, help="first phantom seed (default 5000; the bundled model "
                   "was trained on other seeds)")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--resolution", type=float, default=0.5, help="segmentation grid in mm (default 0.5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the per-case rows as JSON")
    p.add_argument("--picture", type=Path, default=None, help="write the measurement picture of one case (PNG)")
    p.add_argument("--picture-case", type=int, default=0, help="which case the picture shows (default: the first)")
    p.add_argument("--picture-source", choices=("seg", "gt"), default="seg",
                   help="the picture shows the segmentation (default) or the exact GT mesh")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / f"nudf_measure_{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    dirs = make_cases(work, args.count, args.seed)
    rows = []
    for d in dirs:
        t0 = time.perf_counter()
        rows.append(evaluate_case(d, args.model, args.resolution, args.device))
        print(f"{d.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(f"\n{len(rows)} held-out compact phantoms (seeds {args.seed}-{args.seed + args.count - 1}), segmentation "
          f"at {args.resolution:g} mm by {model_tag(args.model)}; machine: {_machine()}\n")
    print("GT mesh measured by NUDFCore.measure vs the phantom's own figures:\n")
    print(gt_table(rows))
    print("\nSegmentation − GT, each measured at its own ostium (the learned cut / the GT rim):\n")
    print(diff_table(rows))
    print(f"\nSegmentation − GT, both re-cut at the same placed ostium plane (the GT ostium plane moved "
          f"{PLANE_OFFSET_MM:g} mm into the LAA):\n")
    print(diff_table(rows, "diff_plane", "plane_warnings", "plane_error"))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    if args.picture:
        print(f"\nwrote {picture(dirs[args.picture_case], args.model, args.resolution, args.picture, args.picture_source)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
