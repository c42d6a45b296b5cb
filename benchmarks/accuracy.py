"""Accuracy benchmark: NUDF on held-out phantoms, per morphology (prints a Markdown table).

Not a test: it prints figures. Example (the bundled model on the held-out phantoms of its model card):

    python benchmarks/accuracy.py --data runs/phantoms_test            # all cases
    python benchmarks/accuracy.py --quick                              # 4 fresh phantoms, one per family, ~minutes

Each case is segmented from its meta.json seed at --resolution mm and compared with the exact ground truth by
NUDFCore.metrics (dense area-weighted sampling, exact point-to-triangle distances). Figures are given in mm and in
units of the CT's voxel spacing (the mean of its three spacings).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return f"{dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def metric_row(case, mesh, spacing: float, wall_s: float) -> dict:
    """One case's figures against its ground truth (shared by every benchmark that scores surfaces)."""
    from NUDFCore.metrics import surface_metrics

    m = surface_metrics(mesh, case.load_mesh(), spacing_mm=spacing, case=case.case_dir.name)
    return {"case": case.case_dir.name, "morphology": case.meta.get("morphology", "?"), "spacing": spacing,
            "msd": m.msd_mm, "hd95": m.hd95_mm, "chamfer": m.chamfer_mm, "rim": m.boundary_mean_mm,
            "false_area": m.false_area_fraction, "completeness2": m.completeness_within_2mm,
            "precision3_pct": m.precision_3mm, "completeness3_pct": m.completeness_3mm,
            "boundary_loops": m.pred_boundary_loops, "offset": m.signed_offset_mm, "wall_s": wall_s}


def evaluate_cases(case_dirs, model, resolution, device) -> list[dict]:
    from NUDFCore.data import load_case
    from NUDFCore.infer import SegmentOptions, segment

    rows = []
    for d in case_dirs:
        case = load_case(d)
        ct = case.load_volume()
        spacing = float(np.mean(ct.spacing))
        t0 = time.perf_counter()
        try:
            r = segment(ct, seed_lps=case.seed_lps, model=model,
                        options=SegmentOptions(resolution_mm=resolution, device=device))
        except Exception as exc:  # a failed case is a result too: report it, do not hide it
            rows.append({"case": case.case_dir.name, "morphology": case.meta.get("morphology", "?"),
                         "spacing": spacing, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{case.case_dir.name}: FAILED {exc}", file=sys.stderr)
            continue
        row = metric_row(case, r.mesh_lps, spacing, time.perf_counter() - t0)
        row.update(peak_rss_mb=r.peak_memory_mb, timings={k: round(v, 2) for k, v in r.timings.items()},
                   queries=r.quality["n_queries"])
        rows.append(row)
        print(f"{row['case']} ({row['morphology']}): MSD {row['msd']:.3f} mm ({row['msd'] / spacing:.2f} vox), "
              f"HD95 {row['hd95']:.2f} mm, false area {100 * row['false_area']:.1f} %, {row['wall_s']:.1f} s",
              file=sys.stderr)
    return rows


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    by = defaultdict(list)
    for r in ok:
        by[r["morphology"]].append(r)
    lines = ["| morphology | cases | MSD mm | MSD vox | HD95 mm | HD95 vox | Chamfer mm | rim mm | false area % | GT within 2 mm % | s/case |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in sorted(by.items()) + [("**all**", ok)]:
        if not rs:
            continue
        med = lambda k: statistics.mean(r[k] for r in rs)  # noqa: E731
        vox = lambda k: statistics.mean(r[k] / r["spacing"] for r in rs)  # noqa: E731
        lines.append(f"| {name} | {len(rs)} | {med('msd'):.3f} | {vox('msd'):.2f} | {med('hd95'):.2f} | {vox('hd95'):.2f} | "
                     f"{med('chamfer'):.3f} | {med('rim'):.2f} | {100 * med('false_area'):.1f} | "
                     f"{100 * med('completeness2'):.0f} | {med('wall_s'):.1f} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        lines.append("")
        lines.append("Failed cases: " + "; ".join(f"{r['case']} ({r['error']})" for r in failed))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="folder of held-out cases (phantoms or real data with meta seeds)")
    p.add_argument("--quick", action="store_true", help="generate 4 compact phantoms (one per morphology) and use them")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--resolution", type=float, default=0.5, help="surface grid in mm (default 0.5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the per-case rows as JSON")
    args = p.parse_args(argv)
    if args.quick:
        from NUDFCore import phantom

        tmp = Path(tempfile.mkdtemp(prefix="nudf_quick_"))
        dirs = []
        for i, morph in enumerate(phantom.MORPHOLOGIES):
            dirs.append(phantom.write_case(phantom.generate_case(90_000 + i, size="compact", morphology=morph),
                                           tmp / f"case_{morph}"))
    elif args.data:
        dirs = sorted(d for d in args.data.iterdir() if d.is_dir())
    else:
        p.error("give --data DIR or --quick")
    rows = evaluate_cases(dirs, args.model, args.resolution, args.device)
    print(f"\nNUDF on {len(dirs)} held-out cases, resolution {args.resolution} mm; machine: {_machine()}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
