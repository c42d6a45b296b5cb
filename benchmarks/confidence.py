"""Is the per-vertex confidence calibrated, and do the quality warnings fire when they should?

Not a test: it prints Markdown tables. Example::

    python benchmarks/confidence.py                          # 8 held-out compact phantoms (seeds 6000-6007), 0.25 mm
    python benchmarks/confidence.py --cases 4 --resolution 0.5 --model runs/nudf_laa.pt

Each phantom (``NUDFCore.phantom.generate_case(seed, size="compact")``, seeds never used in training) is
segmented from its seed with the default options; every vertex's error is its exact distance to the ground-truth
surface. Table 1 bins the vertices by ``confidence`` and reports how the error grows as confidence falls (the
reliability table). Table 2 lists per case the mean surface distance, the share of the ground truth the
segmentation covers (within 2 mm) and the warnings ``segment`` raised, so a warning can be read against what
actually went wrong. Phantoms are generated once into ``--work`` and reused.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=6000, help="first phantom seed (held out: >= 6000)")
    p.add_argument("--resolution", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", type=Path, default=None, help="phantom folder (default: <tmp>/nudf_confidence)")
    p.add_argument("--cases-dir", type=Path, default=None,
                   help="use the first --cases cases of this phantom dataset (nudf phantom output) instead")
    args = p.parse_args(argv)

    import torch

    from NUDFCore import meshtools, phantom
    from NUDFCore.infer import SegmentOptions, default_model_path, segment
    from NUDFCore.io import polydata_points, read_mesh, read_volume
    from NUDFCore.metrics import surface_metrics
    from NUDFCore.quality import CONFIDENCE_ARRAY, point_array
    from unet_baseline import machine

    if args.threads:
        torch.set_num_threads(args.threads)
    model = str(Path(args.model).resolve()) if args.model else str(default_model_path())
    work = args.work or Path(tempfile.gettempdir()) / "nudf_confidence"
    conf_all, err_all, rows = [], [], []
    if args.cases_dir is not None:
        from NUDFCore.data import list_cases

        folders = [c.case_dir for c in list_cases(args.cases_dir)[: args.cases]]
    else:
        folders = [work / f"case_{seed}" for seed in range(args.seed, args.seed + args.cases)]
    for folder in folders:
        if not (folder / "meta.json").exists():
            phantom.write_case(phantom.generate_case(int(folder.name.split("_")[-1]), size="compact"), folder,
                               overwrite=True)
        meta = json.loads((folder / "meta.json").read_text())
        gt = read_mesh(folder / "laa.vtp")
        t0 = time.perf_counter()
        r = segment(read_volume(folder / "ct.nii.gz"), seed_lps=meta["seed_lps"], model=model,
                    options=SegmentOptions(resolution_mm=args.resolution))
        seconds = time.perf_counter() - t0
        conf = point_array(r.mesh_lps, CONFIDENCE_ARRAY)
        err = meshtools.unsigned_distance(gt, polydata_points(r.mesh_lps))
        conf_all.append(conf)
        err_all.append(err)
        m = surface_metrics(r.mesh_lps, gt)
        rows.append((meta["seed"], meta["morphology"], m.msd_mm, m.completeness_within_2mm,
                     r.quality.get("mean_confidence", float("nan")), r.quality.get("warning_codes", []), seconds))
        print(f"{meta['seed']} {meta['morphology']}: MSD {m.msd_mm:.3f} mm, mean confidence "
              f"{r.quality.get('mean_confidence', float('nan')):.2f}, warnings {r.quality.get('warning_codes')}, "
              f"completeness2 {m.completeness_within_2mm:.2f}, "
              + ", ".join(f"{k} {r.quality[k]:.2f}" for k in ("rim_opens_fraction", "ostium_diameter_mm", "holes",
                                                               "low_confidence_area") if k in r.quality),
              file=sys.stderr)
    conf, err = np.concatenate(conf_all), np.concatenate(err_all)
    from scipy.stats import spearmanr

    rho = spearmanr(conf, err).statistic
    command = "python benchmarks/confidence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [f"Command: `{command}`", f"Machine: {machine()}", "",
           f"Model `{Path(model).name}`; {len(rows)} held-out compact phantoms (seeds "
           f"{', '.join(str(r[0]) for r in rows)}); surface grid {args.resolution} mm; {len(conf):,} vertices. Error = exact "
           f"distance from the vertex to the ground-truth surface. Spearman correlation of confidence and error: "
           f"{rho:.2f}.", "",
           "| confidence | vertices | mean error mm | median mm | 90th pct mm | error > 1 mm |",
           "|---|---|---|---|---|---|"]
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (conf >= lo) & (conf < hi)
        if not sel.any():
            out.append(f"| {lo:.1f}–{min(hi, 1.0):.1f} | 0 | | | | |")
            continue
        e = err[sel]
        out.append(f"| {lo:.1f}–{min(hi, 1.0):.1f} | {100 * sel.mean():.1f} % | {e.mean():.3f} | {np.median(e):.3f} | "
                   f"{np.percentile(e, 90):.3f} | {100 * np.mean(e > 1.0):.1f} % |")
    out += ["", "| phantom | morphology | MSD mm | GT covered (2 mm) | mean confidence | warnings | s |",
            "|---|---|---|---|---|---|---|"]
    for seed, morph, msd, cover, mconf, codes, sec in rows:
        cov = f"{100 * cover:.0f} %"
        out.append(f"| {seed} | {morph} | {msd:.3f} | {cov} | {mconf:.2f} | {', '.join(codes) or '—'} | {sec:.0f} |")
    text = "\n".join(out)
    print("\n" + text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "results_confidence.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
