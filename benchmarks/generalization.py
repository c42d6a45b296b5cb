"""Cross-domain benchmark: does a model segment LAAs from data unlike its training set? (prints Markdown tables)

Not a test: it measures. Each *set* is a folder of cases (phantom cases, or a case made by ``nudf prepare`` from a
label map) given as ``NAME=DIR``; every method is scored on every set with the same metrics:

- MSD and HD95 (mm and in units of each CT's mean voxel spacing);
- **precision** (% of the predicted surface within 3 mm of the ground truth) and **completeness** (% of the
  ground-truth surface within 2 mm and 3 mm of the prediction): the generalisation failures seen so far are
  partial surfaces (the LAA cut too early) and surfaces running on over the atrial wall, which a mean distance
  hides and these two figures show;
- false area (% of the predicted area farther than 3 mm from the ground truth) and failed cases;
- **offset**: each case's median signed distance of the predicted surface to the ground truth (negative = inside
  the LAA cavity), averaged over the set, and the mean of its size (``|offset|``): how much of the MSD is a
  surface shifted as a whole rather than noise about the right place.

Methods: NUDF checkpoints (``--model NAME=CKPT``, repeatable; default: the bundled model) and, optionally, the
3D U-Net baseline (``--unet CKPT`` from ``benchmarks/unet_baseline.py``; its surface is clipped at each case's
*ground-truth* ostium plane, an advantage NUDF does not get: NUDF finds the ostium itself).

The sets used in ``benchmarks/RESULTS.md`` come from ``benchmarks/train_bundled_model.sh`` (held-out phantoms of
the training styles, and phantoms of the style held out of training), from the previous phantom generator (the
old model's held-out cases) and from ``benchmarks/real_ct.py`` (the real CT, validation only: nothing is chosen
by looking at it). Example::

    python benchmarks/generalization.py --model new=runs/nudf_laa.pt --model old=old_model.pt \\
        --set own=runs/phantoms_test --set held_out_style=runs/phantoms_narrow_neck \\
        --set classic=runs/phantoms_classic_test --set real_ct=runs/real_ct/case --unet runs/unet/unet_laa.pt
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # accuracy.py and unet_baseline.py beside this file

COLUMNS = ("cases", "MSD mm", "MSD vox", "HD95 mm", "HD95 vox", "precision 3 mm %", "completeness 2 mm %",
           "completeness 3 mm %", "false area %", "offset mm", "|offset| mm", "failed")


def score_nudf(case_dirs: list[Path], model: str | None, resolution: float, device: str) -> list[dict]:
    from accuracy import evaluate_cases

    return evaluate_cases(case_dirs, model, resolution, device)


def score_unet(case_dirs: list[Path], ckpt: Path, device: str, crop_n: int = 64, crop_mm: float = 70.0) -> list[dict]:
    import torch
    from unet_baseline import build_unet, evaluate_unet

    from NUDFCore.data import load_case

    net = build_unet()
    net.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"])
    return evaluate_unet(net.to(device).eval(), [load_case(d) for d in case_dirs],
                         SimpleNamespace(crop_n=crop_n, crop_mm=crop_mm), device)


def summary(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if "error" not in r]
    failed = len(rows) - len(ok)
    if not ok:
        return [str(len(rows))] + ["—"] * (len(COLUMNS) - 2) + [str(failed)]
    mean = lambda k: statistics.mean(r[k] for r in ok)  # noqa: E731
    vox = lambda k: statistics.mean(r[k] / r["spacing"] for r in ok)  # noqa: E731
    return [str(len(rows)), f"{mean('msd'):.3f}", f"{vox('msd'):.2f}", f"{mean('hd95'):.2f}", f"{vox('hd95'):.2f}",
            f"{mean('precision3_pct'):.1f}", f"{100 * mean('completeness2'):.1f}", f"{mean('completeness3_pct'):.1f}",
            f"{100 * mean('false_area'):.1f}", _offsets(ok), _offsets(ok, absolute=True), str(failed)]


def _offsets(rows: list[dict], absolute: bool = False) -> str:
    """Mean over cases of each case's median signed offset (< 0: inside the GT cavity), or of its size."""
    vals = [r["offset"] for r in rows if not math.isnan(r.get("offset", math.nan))]
    if not vals:
        return "—"
    return f"{statistics.mean(abs(v) for v in vals):.2f}" if absolute else f"{statistics.mean(vals):+.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", default=[], metavar="NAME=DIR", required=True,
                   help="a test set: a folder of case folders, or one case folder (repeatable)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=CKPT",
                   help="a NUDF checkpoint to score (repeatable; default: the bundled model)")
    p.add_argument("--unet", type=Path, default=None, help="also score this U-Net checkpoint (unet_baseline.py)")
    p.add_argument("--unet-only", action="store_true", help="score only the --unet checkpoint (no NUDF model)")
    p.add_argument("--resolution", type=float, default=0.25, help="NUDF surface grid in mm (default 0.25)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="write every per-case row here")
    args = p.parse_args(argv)

    from NUDFCore.data import list_cases, load_case
    from NUDFCore.errors import InputError
    from NUDFCore.infer import default_model_path
    from NUDFCore.model import resolve_device
    from NUDFCore.provenance import model_sha256_prefix

    device = str(resolve_device(args.device))
    sets = {}
    for spec in args.set:
        name, _, folder = spec.partition("=")
        folder = Path(folder)
        if not folder.is_dir():
            p.error(f"--set {spec}: {folder} is not a folder")
        try:  # one case folder, or a folder of cases
            sets[name] = [load_case(folder).case_dir]
        except InputError:
            sets[name] = [c.case_dir for c in list_cases(folder)]
    if args.unet_only and args.unet is None:
        p.error("--unet-only needs --unet CKPT")
    models = [tuple(m.partition("=")[::2]) for m in args.model] or [("bundled", str(default_model_path()))]
    if args.unet_only:
        models = []
    results: dict = {}
    for mname, ckpt in models:
        for sname, dirs in sets.items():
            print(f"NUDF {mname} on {sname} ({len(dirs)} cases)", file=sys.stderr)
            results[(f"NUDF {mname} ({Path(ckpt).name}, {model_sha256_prefix(ckpt)})", sname)] = score_nudf(
                dirs, ckpt, args.resolution, device)
    if args.unet is not None:
        for sname, dirs in sets.items():
            print(f"U-Net on {sname}", file=sys.stderr)
            results[(f"3D U-Net ({args.unet.name})", sname)] = score_unet(dirs, args.unet, device)

    print(f"\nGeneralisation benchmark, {dt.date.today().isoformat()}, NUDF surface grid {args.resolution} mm, "
          f"device {device}\n")
    print("| method | set | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for (method, sname), rows in results.items():
        print(f"| {method} | {sname} | " + " | ".join(summary(rows)) + " |")
    if args.json:
        args.json.write_text(json.dumps([{"method": m, "set": s, "rows": r} for (m, s), r in results.items()],
                                        indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
