"""The ``nudf`` command line: ``nudf --help`` and ``nudf <command> --help`` are the documentation.

Each subcommand has an ``_add_<name>(subparsers)`` that defines its arguments and a ``_run_<name>(args)``
that does the work by calling the library; the library raises typed :class:`NUDFError` s for user
mistakes, which :func:`main` prints as one clear line (exit code 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import NUDFError

EPILOG = (
    "Coordinates are millimetres. Files (CT, meshes) are in LPS unless a --frame option says otherwise; "
    "Slicer shows RAS (x and y negated)."
)


# ------------------------------------------------------------------------------------------ phantom
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="generate synthetic cardiac CTA phantoms with exact LAA ground truth",
        description="Generate synthetic contrast-enhanced cardiac CT cases, each with an exact open LAA "
        "surface mesh (cut at the ostium) and metadata. A folder of cases is a training dataset: "
        "DIR/case_0000/{ct.nii.gz, laa.vtp, laa.stl, meta.json}, ... (case i uses seed+i). LAA families "
        "(chicken wing, cactus, windsock, cauliflower) are drawn uniformly. Everything that does not define "
        "the LAA is randomised per case (tissue HU, opacification, trabeculae, mouth shape, LA shape, "
        "neighbours, noise, PSF, slices, artefacts), grouped into styles that can be held out or forced.",
        epilog=EPILOG,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per case)")
    p.add_argument("--count", type=int, default=1, help="number of cases (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; case i uses seed+i (default: 0)")
    p.add_argument("--size", choices=("full", "compact"), default="full",
                   help="full: a 512x512 CT with a realistic field of view (default); compact: a 110-130 mm "
                   "field of view around the left atrium (fast, for training sets and tests)")
    p.add_argument("--exclude-style", action="append", default=[], metavar="STYLE",
                   help="never draw this domain-randomisation style (repeatable), e.g. to hold it out of a "
                   "training set; styles: " + ", ".join(_phantom_styles()))
    p.add_argument("--only-style", action="append", default=[], metavar="STYLE",
                   help="always draw this style (repeatable), e.g. for a test set of that style")
    p.add_argument("--workers", type=int, default=1, help="cases generated in parallel processes (default: 1)")
    p.add_argument("--force", action="store_true", help="overwrite existing case folders")
    p.set_defaults(func=_run_phantom)


def _phantom_styles() -> list[str]:
    try:  # a development tool: the Slicer extension ships the engine without the phantom generator
        from .phantom.styles import STYLES
    except ImportError:
        return []
    return list(STYLES)


def _run_phantom(args: argparse.Namespace) -> int:
    from .io import check_output_dir
    from .phantom import generate_dataset

    check_output_dir(args.out)  # a read-only or impossible --out fails now, not after the first case
    def report(folder: Path) -> None:
        print(f"{folder.name}: CT {folder / 'ct.nii.gz'}  mesh {folder / 'laa.vtp'} (+ laa.stl, LPS)  "
              f"meta {folder / 'meta.json'}", flush=True)

    from .phantom import style_probabilities

    styles = style_probabilities(exclude=args.exclude_style, only=args.only_style)
    generate_dataset(args.out, args.count, args.seed, size=args.size, overwrite=args.force,
                     progress=sys.stderr.isatty(), on_case=report, styles=styles, workers=args.workers)
    return 0


# ------------------------------------------------------------------------------------------ segment
def _parse_numbers(text: str, count: int, what: str) -> list[float]:
    """``count`` comma-separated numbers, or an argparse error saying ``what`` was expected."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != count:
        raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
    return vals


def _parse_point(text: str) -> list[float]:
    return _parse_numbers(text, 3, "three comma-separated numbers x,y,z in mm")


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment the LAA of a CT from one seed point and write its open surface mesh",
        description="Segment the left atrial appendage from a contrast-enhanced cardiac CT, given one point "
        "inside the LAA, and write the open LAA surface (cut at the ostium) as STL/VTP/OBJ/PLY. "
        "Nothing is written when the input is unusable or no trustworthy surface is found.",
        epilog=EPILOG + " Example: nudf segment ct.nii.gz --seed-lps=-12.5,30,88 --out laa.stl (write --seed-lps=... with an equals sign when the first coordinate is negative).",
    )
    p.add_argument("ct", type=Path, help="CT file (.nii/.nii.gz/.nrrd/.mha/.mhd) or DICOM series folder")
    seed = p.add_mutually_exclusive_group(required=True)
    seed.add_argument("--seed-lps", type=_parse_point, metavar="X,Y,Z", help="seed inside the LAA, LPS mm (as ITK/DICOM)")
    seed.add_argument("--seed-ras", type=_parse_point, metavar="X,Y,Z", help="seed inside the LAA, RAS mm (as shown in Slicer)")
    p.add_argument("--out", required=True, type=Path, help="output mesh; format from the extension (.stl .vtp .obj .ply .vtk)")
    p.add_argument("--frame", choices=["lps", "ras"], default="lps", help="coordinate frame of the written mesh (default: lps, as Slicer writes STL)")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint (default: $NUDF_MODEL or the bundled model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the network runs (default: auto = CUDA when present)")
    p.add_argument("--resolution", type=float, default=0.25, metavar="MM", help="final surface-extraction grid in mm (default: 0.25)")
    p.add_argument("--smoothing", type=float, default=0.0, metavar="S", help="windowed-sinc smoothing strength 0..1 (default: 0 = off; does not shrink)")
    p.add_argument("--decimate", type=float, default=0.0, metavar="F", help="fraction of triangles to remove, 0..0.9 (default: 0)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--crop-center-lps", type=_parse_point, metavar="X,Y,Z",
                      help="centre the crop here (LPS mm) instead of around the seed, e.g. a user ROI's centre")
    crop.add_argument("--crop-center-ras", type=_parse_point, metavar="X,Y,Z", help="the same in RAS mm")
    p.add_argument("--crop-size", type=float, default=None, metavar="MM",
                   help="edge of the cube the network sees (default: the model's training crop; change with care)")
    p.add_argument("--exact-gradients", action="store_true",
                   help="distance gradients by autograd through the network (about 2x slower, marginally more "
                   "accurate) instead of from the evaluation grid")
    p.add_argument("--series-uid", default=None, help="DICOM series to read when the folder holds several")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--measure", action="store_true",
                   help="also measure the LAA (ostium, landing zones, depth, volume; see nudf measure) into "
                   "OUT's sibling <name>.measurements.json")
    p.add_argument("--strict", action="store_true",
                   help="treat the completeness/plausibility warnings as a failure: write nothing and exit 3 "
                   "(default: write the mesh, print the warnings, exit 0)")
    p.add_argument("--progress-format", choices=["text", "json", "none"], default="text",
                   help="progress on stderr as bars (text), one JSON object per line on stdout (json, for programs), or none")
    p.set_defaults(func=_run_segment)


class _TextProgress:
    """A tqdm bar per stage on stderr."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, fraction: float) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=stage, unit="%", leave=False, file=sys.stderr,
                            bar_format="{desc:<32} {percentage:3.0f}%|{bar}| {elapsed}")
        target = int(round(100 * fraction))
        if self.bar is not None and target > self.bar.n:
            self.bar.update(target - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _json_progress(stage: str, fraction: float) -> None:
    import json

    print(json.dumps({"stage": stage, "fraction": round(fraction, 4)}), flush=True)


def _run_segment(args: argparse.Namespace) -> int:
    import json

    from .infer import SegmentOptions, segment
    from .io import MESH_EXTENSIONS, check_output_path, read_volume, write_mesh

    out = check_output_path(args.out, MESH_EXTENSIONS, overwrite=args.force)  # fail before any work
    text_progress = _TextProgress() if args.progress_format == "text" else None
    progress = {"text": text_progress, "json": _json_progress, "none": None}[args.progress_format]
    from .frames import to_lps

    crop_center = args.crop_center_lps or args.crop_center_ras
    crop_frame = "lps" if args.crop_center_lps else "ras"
    options = SegmentOptions(resolution_mm=args.resolution, device=args.device, smoothing=args.smoothing,
                             decimate=args.decimate, progress=progress, crop_size_mm=args.crop_size,
                             exact_gradients=args.exact_gradients,
                             crop_center_lps=None if crop_center is None else to_lps(crop_center, crop_frame))
    options.check()
    from .provenance import check_sidecar, segmentation_provenance, write_provenance

    sidecar = check_sidecar(out, overwrite=args.force)  # laa.stl -> laa.json, refused before the work like the mesh
    measurements_out = None
    if args.measure:
        measurements_out = check_output_path(out.with_name(out.stem + ".measurements.json"), overwrite=args.force)
    try:
        ct = read_volume(args.ct, series_uid=args.series_uid)
        result = segment(ct, seed_lps=args.seed_lps, seed_ras=args.seed_ras, model=args.model, options=options)
    finally:
        if text_progress is not None:
            text_progress.close()
    warnings = list(result.quality.get("warnings", []))
    for w in warnings:  # the result's own doubts, before anything is written
        print(f"nudf segment: warning: {w}", file=sys.stderr)
    if warnings and args.strict:
        print(f"nudf segment: error: --strict and {len(warnings)} warning(s): nothing written.", file=sys.stderr)
        return 3
    measurements = None
    if measurements_out is not None:  # measured before anything is written: a failure leaves nothing behind
        from .measure import measure_laa

        measurements = measure_laa(result.mesh_lps)
    write_mesh(result.mesh_lps, out, frame=args.frame, overwrite=args.force)
    try:
        record = segmentation_provenance(seed_lps=result.seed_lps, options=options, model=args.model, input_file=args.ct)
        write_provenance(record, sidecar, overwrite=args.force)
        if measurements is not None:
            measurements.to_json(measurements_out, overwrite=args.force)
    except BaseException:
        out.unlink(missing_ok=True)  # no mesh without its provenance
        raise
    if args.progress_format == "json":
        summary = {"out": str(out), "provenance": str(sidecar), "frame": args.frame, "timings": result.timings,
                   "peak_memory_mb": result.peak_memory_mb, "quality": result.quality}
        if measurements_out is not None:
            summary["measurements"] = str(measurements_out)
        print(json.dumps({"done": True, "summary": summary}), flush=True)
    else:
        print(f"Wrote {out} ({args.frame.upper()}): {result.summary()}"
              + (f"; {len(warnings)} warning(s) above" if warnings else ""))
        if measurements is not None:
            o = measurements.ostium
            print(f"Wrote {measurements_out}: ostium {o.max_diameter_mm:.1f} x {o.min_diameter_mm:.1f} mm, "
                  f"depth {measurements.depth_mm:.1f} mm, volume {measurements.volume_ml:.2f} mL")
    return 0


# ------------------------------------------------------------------------------------------ evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="compare a predicted mesh with a ground-truth mesh (surface distances in mm)",
        description="Surface metrics between two meshes by dense area-weighted sampling and exact "
        "point-to-triangle distances: symmetric mean surface distance, RMS, HD95 (max of the two directed "
        "95th percentiles), Hausdorff, Chamfer-L1 (sum of the two directed means), normal consistency, "
        "ostium rim (longest boundary loop) distance, the predicted area farther than 3 mm from the GT, and "
        "precision / completeness: the percentage of the predicted area within 2 and 3 mm of the GT, and of the "
        "GT area within 2 and 3 mm of the prediction.",
        epilog=EPILOG,
    )
    p.add_argument("pred", type=Path, help="predicted mesh (STL, VTP, OBJ, PLY, VTK)")
    p.add_argument("gt", type=Path, help="ground-truth mesh")
    p.add_argument("--frame-pred", choices=("lps", "ras"), default=None,
                   help="frame of PRED's points (default: the file's SPACE tag, LPS when untagged)")
    p.add_argument("--frame-gt", choices=("lps", "ras"), default=None,
                   help="frame of GT's points (default: the file's SPACE tag, LPS when untagged)")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    p.add_argument("--csv", type=Path, default=None, help="write the figures as a one-row CSV table")
    p.add_argument("--append", action="store_true", help="append the row to an existing --csv table")
    p.add_argument("--samples", type=int, default=50_000, help="samples per mesh (default: 50000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--spacing", type=float, default=None,
                   help="CT voxel spacing in mm: also report the distances in voxel units")
    p.add_argument("--false-threshold", type=float, default=3.0,
                   help="distance (mm) beyond which predicted area counts as false (default: 3)")
    p.add_argument("--case", default="", help="case name stored in the JSON/CSV row")
    p.add_argument("--measure", action="store_true",
                   help="also measure both meshes (nudf measure) and report the differences: ostium centre "
                   "distance, normal angle, diameter/area/depth/volume errors (table and JSON key 'measurements')")
    p.add_argument("--force", action="store_true", help="overwrite existing JSON/CSV outputs")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .io import check_output_path, read_mesh
    from .metrics import format_table, surface_metrics, write_csv

    for out in (args.json, args.csv):  # refuse before the work, not after
        if out is not None:
            check_output_path(out, None, overwrite=args.force or (out == args.csv and args.append))
    pred = read_mesh(args.pred, frame=args.frame_pred)
    gt = read_mesh(args.gt, frame=args.frame_gt)
    m = surface_metrics(pred, gt, n_samples=args.samples, seed=args.seed, spacing_mm=args.spacing,
                        false_area_threshold_mm=args.false_threshold, case=args.case)
    print(f"{args.pred.name} vs {args.gt.name}")
    print(format_table(m))
    measured = None
    if args.measure:
        from .measure import compare_measurements, format_comparison, measure_laa

        measured = measure_laa(pred), measure_laa(gt)
        print(format_comparison(*measured))
    if args.json is not None and measured is not None:
        import json

        from .measure import write_json

        data = json.loads(m.to_json())
        data["measurements"] = {"pred": measured[0].flat_row(), "gt": measured[1].flat_row(),
                                "differences": compare_measurements(*measured)}
        write_json(data, args.json, overwrite=args.force)
        print(f"wrote {args.json}")
    elif args.json is not None:
        m.to_json(args.json, overwrite=args.force)
        print(f"wrote {args.json}")
    if args.csv is not None:
        write_csv([m], args.csv, overwrite=args.force, append=args.append)
        print(f"wrote {args.csv}")
    return 0


# ------------------------------------------------------------------------------------------ measure
def _parse_depths(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        vals = []
    if not vals or any(not v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive comma-separated depths in mm, e.g. 10,12; got {text!r}")
    return vals


def _add_measure(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "measure",
        help="LAA occlusion planning measurements of an open LAA mesh (ostium, landing zones, depth, volume)",
        description="Measure an open LAA surface whose boundary loop is the ostium: best-fit ostium plane, "
        "perimeter, area, maximum/minimum Feret diameters, perimeter- and area-derived diameters, ovality, "
        "planarity; the centreline (ostium centre to apex), its length and bend angle; landing zones "
        "(cross-sections perpendicular to the centreline at the given depths along it); a diameter profile "
        "every mm; depth; surface area; volume with the ostium capped. Prints a table; --json writes every "
        "figure (keys documented in NUDFCore/measure.py; coordinates LPS), --csv one row per mesh.",
        epilog=EPILOG + " Example: nudf measure laa.stl --json m.json --landing-depths 10,12",
    )
    p.add_argument("mesh", type=Path, help="open LAA mesh (STL, VTP, OBJ, PLY, VTK)")
    p.add_argument("--frame", choices=("lps", "ras"), default=None,
                   help="frame of MESH's points (default: the file's SPACE tag, LPS when untagged); the table "
                   "shows the ostium centre in this frame, the JSON is always LPS")
    p.add_argument("--json", type=Path, default=None, help="write every measurement to this JSON file")
    p.add_argument("--csv", type=Path, default=None, help="write the measurements as a one-row CSV table")
    p.add_argument("--append", action="store_true", help="append the row to an existing --csv table (a cohort)")
    p.add_argument("--case", default=None, help="case name of the CSV row (default: the mesh file name)")
    p.add_argument("--landing-depths", type=_parse_depths, default=[10.0, 12.0], metavar="D1,D2",
                   help="landing-zone depths along the centreline in mm (default: 10,12)")
    p.add_argument("--profile-step", type=float, default=1.0, metavar="MM",
                   help="spacing of the diameter profile along the centreline (default: 1 mm)")
    plane = p.add_mutually_exclusive_group()
    plane.add_argument("--ostium-plane-lps", type=_parse_plane, metavar="X,Y,Z,NX,NY,NZ",
                       help="re-cut the surface at this ostium plane (LPS point and normal) instead of using its "
                       "boundary; the appendage side is kept (write --ostium-plane-lps=... when X is negative)")
    plane.add_argument("--ostium-plane-ras", type=_parse_plane, metavar="X,Y,Z,NX,NY,NZ", help="the same in RAS")
    p.add_argument("--force", action="store_true", help="overwrite existing JSON/CSV outputs")
    p.set_defaults(func=_run_measure)


def _run_measure(args: argparse.Namespace) -> int:
    from .frames import to_lps
    from .io import check_output_path, mesh_file_frame, read_mesh
    from .measure import format_table, measure_laa, write_csv

    if args.json is not None:  # refuse before the work, not after
        check_output_path(args.json, (".json",), overwrite=args.force)
    if args.csv is not None:
        check_output_path(args.csv, (".csv",), overwrite=args.force or args.append)
    mesh = read_mesh(args.mesh, frame=args.frame)
    plane = None
    raw = args.ostium_plane_lps or args.ostium_plane_ras
    if raw is not None:
        frame = "lps" if args.ostium_plane_lps else "ras"
        plane = (to_lps(raw[:3], frame), to_lps(raw[3:], frame))
    m = measure_laa(mesh, ostium_plane_lps=plane, landing_depths_mm=args.landing_depths,
                    profile_step_mm=args.profile_step)
    print(f"{args.mesh.name}:")
    print(format_table(m, frame=args.frame or mesh_file_frame(args.mesh)))
    if args.json is not None:
        m.to_json(args.json, overwrite=args.force)
        print(f"wrote {args.json}")
    if args.csv is not None:
        write_csv([(args.case or args.mesh.name, m)], args.csv, overwrite=args.force, append=args.append)
        print(f"wrote {args.csv}")
    return 0


# ------------------------------------------------------------------------------------------ train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a NUDF model on a folder of cases (phantoms or real data)",
        description="Train the network on DIR/<case>/ folders (ct.nii.gz|ct.nrrd|..., laa.vtp open LAA mesh in "
        "LPS, optional meta.json). Query samples are computed once per case and cached in the case folder. "
        "OUT receives the best model (lowest validation loss); OUT's sibling <name>.last.pt the last epoch, "
        "which --resume continues. Several GPUs: torchrun --nproc_per_node=N -m NUDFCore train ... "
        "(gloo on CPU).",
        epilog=EPILOG,
    )
    p.add_argument("--data", required=True, type=Path, help="dataset folder (one sub-folder per case)")
    p.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument("--epochs", type=int, default=30, help="total number of epochs (default: 30)")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="optimiser steps per epoch (default: 100)")
    p.add_argument("--points", type=int, default=5000, help="query points per crop per step (default: 5000)")
    p.add_argument("--batch-size", type=int, default=1, help="crops per step (default: 1)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate, cosine decay (default: 3e-4)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of cases held out for validation (default: 0.2; 0: validate on training cases)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--preset", choices=["small", "paper", "tiny"], default="small",
                   help="model size: small = 64^3 CPU-trainable (default), paper = the authors' 128^3 sizes, "
                   "tiny = 32^3 for smoke tests only")
    p.add_argument("--crop-n", type=int, default=None, help="crop grid size (default: the preset's)")
    p.add_argument("--crop-mm", type=float, default=None, help="crop cube side in mm (default: 70)")
    p.add_argument("--hard-negatives", type=float, default=0.2,
                   help="share of hard-negative query points (other edges, beyond the ostium; default: 0.2)")
    p.add_argument("--sample-points", type=int, default=200_000,
                   help="query samples computed (and cached) per case (default: 200000)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=Path, metavar="CKPT",
                   help="continue training from OUT's .last.pt (or from CKPT); --epochs is the new total. With "
                   "another --data (fine-tuning on more cases) the best model is chosen afresh on the new "
                   "validation cases")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL",
                   help="start from this model's weights (e.g. the bundled NUDFCore/models/nudf_laa.pt) with a "
                   "fresh optimiser and schedule: fine-tuning on your own data; the architecture is MODEL's "
                   "(--preset/--crop-* are ignored)")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .io import check_output_path
    from .train import TrainConfig, train

    # a writable file name now, not after hours; whether an existing OUT may be replaced is train's call
    # (--force / --resume)
    check_output_path(args.out, (".pt",), overwrite=True)
    config = TrainConfig(
        data=args.data, out=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        points=args.points, batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
        seed=args.seed, device=args.device, preset=args.preset, crop_n=args.crop_n, crop_mm=args.crop_mm,
        hard_negative_fraction=args.hard_negatives, threads=args.threads, resume=args.resume, init=args.init,
        force=args.force, sample_points=args.sample_points,
    )
    result = train(config, progress=not args.quiet)
    if result["rank"] == 0 and result["history"]:
        last = result["history"][-1]
        print(f"trained to epoch {last['epoch']}: best model {result['best']} (validation loss "
              f"{result['best_loss']:.3f} mm), resumable checkpoint {result['last']}")
    return 0


# ------------------------------------------------------------------------------------------ prepare
def _parse_plane(text: str) -> list[float]:
    return _parse_numbers(text, 6, "six comma-separated numbers x,y,z,nx,ny,nz")


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a label map (e.g. TotalSegmentator output) into a case: open LAA mesh cut at the ostium",
        description="Make a dataset case (the layout nudf train and the benchmarks read) from a voxel label map: "
        "OUT/laa.vtp, the open LAA cavity surface (sub-voxel smooth, LPS mm) cut at the ostium with one boundary "
        "loop; OUT/meta.json (seed_lps deep inside the LAA, ostium centre and normal fitted to the cut, spacing, "
        "source); OUT/ct.nii.gz when --ct is given (copied, or converted from NRRD/MHA/DICOM). The ostium is "
        "where the LAA label touches --atrium-label (the left atrium, or the whole heart), or the plane "
        "--ostium-plane-lps. Nothing is written when an input is unusable.",
        epilog=EPILOG + " Example (TotalSegmentator: 61 = left atrial appendage, 51 = heart): nudf prepare "
        "--labels seg.nii.gz --laa-label 61 --atrium-label 51 --ct ct.nii.gz --out cases/patient01",
    )
    p.add_argument("--labels", required=True, type=Path, help="label map (.nii/.nii.gz/.nrrd/.mha or DICOM folder)")
    p.add_argument("--laa-label", required=True, type=int, metavar="N", help="label value of the LAA")
    cut = p.add_mutually_exclusive_group(required=True)
    cut.add_argument("--atrium-label", type=int, metavar="M",
                     help="label value of the left atrium or heart: the LAA is cut where it touches it")
    cut.add_argument("--ostium-plane-lps", type=_parse_plane, metavar="X,Y,Z,NX,NY,NZ",
                     help="cut at this plane instead: a point and a normal pointing from the atrium into the LAA, "
                     "LPS mm (write --ostium-plane-lps=... with = when the first number is negative)")
    p.add_argument("--ct", type=Path, default=None,
                   help="the CT the labels belong to (same physical space; the grid may differ)")
    p.add_argument("--out", required=True, type=Path, help="case folder to write")
    p.add_argument("--case-id", default=None, help="case_id in meta.json (default: the folder name)")
    p.add_argument("--force", action="store_true", help="replace an existing case folder")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    import json

    from .prepare import prepare

    out = prepare(args.labels, args.laa_label, args.out, atrium_label=args.atrium_label,
                  ostium_plane_lps=args.ostium_plane_lps, ct_path=args.ct, force=args.force, case_id=args.case_id)
    meta = json.loads((out / "meta.json").read_text())
    laa = meta["laa"]
    print(f"Wrote {out}: laa.vtp ({laa['area_mm2']:.0f} mm2, {laa['boundary_loops']} boundary loop, ostium "
          f"{laa['ostium_diameter_mm']:.1f} mm), meta.json (seed_lps {[round(v, 1) for v in meta['seed_lps']]})"
          + (", ct.nii.gz" if args.ct is not None else " (no CT: give --ct to train or evaluate on it)"))
    return 0


# ------------------------------------------------------------------------------------------ demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a phantom, segment its LAA, compare with the ground truth, draw pictures",
        description="The end-to-end demonstration behind `make demo`: a synthetic cardiac CTA phantom is generated, "
        "its LAA segmented from the phantom's seed point, and the STL, the surface distances to the exact ground "
        "truth (JSON) and two PNG pictures are written. Without a bundled model, a small demonstration model is "
        "first trained on the phantom itself (and the output says so).",
        epilog=EPILOG,
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)")
    p.add_argument("--seed", type=int, default=7, help="phantom seed (default: 7)")
    p.add_argument("--size", choices=["full", "compact"], default="full",
                   help="full: a 512x512xN CT (default); compact: a smaller field of view, faster")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint (default: the bundled model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the network runs")
    p.add_argument("--resolution", type=float, default=0.5, metavar="MM", help="surface grid in mm (default: 0.5)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, seed=args.seed, size=args.size, model=args.model, device=args.device,
             resolution_mm=args.resolution)
    return 0


# ------------------------------------------------------------------------------------------ batch
_BATCH_DESCRIPTION = """\
Segment every case of a manifest (a cohort) with one model load per worker. Per case it writes
DIR/<case_id>/laa.vtp (LPS), laa.json (provenance), measurements.json (--measure) and case.json (the
case's row, quality and timings; the folder appears only when the case is complete), and DIR/summary.csv
with one row per case: status ok/failed/skipped, the error of a failed case, timings, quality warnings and,
with a gt mesh, MSD/HD95/precision/completeness. Re-running the same command skips the done cases (--redo
recomputes them); an interrupted batch loses at most the cases in flight. One bad case never stops the others.

Manifest: CSV (.csv, .tsv) or JSON lines (.jsonl), one case per row, columns:
  case_id           required; letters, digits, '.', '_', '-' (names the case folder)
  ct                required; CT file or DICOM series folder (relative to the manifest's folder)
  seed_lps|seed_ras exactly one per row: a point inside the LAA, three numbers in mm ("x,y,z" or [x,y,z])
  gt                optional; an open reference LAA mesh: adds the GT surface metrics to summary.csv
  ostium_plane_lps  optional; x,y,z,nx,ny,nz: the ostium plane that --measure measures at
Example (CSV):
  case_id,ct,seed_lps,gt
  p001,scans/p001.nii.gz,"-12.5,30.1,88",refs/p001_laa.stl

Workers: --workers 1 (default) runs in this process; --workers N starts a local Dask cluster of N
processes (cores/N threads each); --scheduler tcp://host:8786 uses an existing Dask cluster, whose workers
must see the manifest's paths. Dask comes with: pip install 'NUDFCore[batch]'.
Exit status: 0 when no case failed, 1 when some failed, 2 for a usage error (nothing run), 130 on Ctrl-C.
"""


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="segment a cohort from a manifest (resumable; local pool or Dask cluster)",
        description=_BATCH_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", type=Path, help="manifest file (.csv, .tsv or .jsonl); columns above")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; one sub-folder per case)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel workers on this machine (default: 1 = in this process; N > 1 needs Dask)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of an existing Dask scheduler, e.g. tcp://host:8786 (its workers run the cases)")
    p.add_argument("--redo", action="store_true", help="recompute cases that are already done")
    p.add_argument("--measure", action="store_true", help="also write LAA occlusion-planning measurements per case")
    p.add_argument("--model", type=Path, default=None, help="model checkpoint (default: $NUDF_MODEL or the bundled model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the network runs (default: auto = CUDA when present; one GPU per local worker)")
    p.add_argument("--resolution", type=float, default=0.25, metavar="MM", help="surface-extraction grid in mm (default: 0.25)")
    p.add_argument("--smoothing", type=float, default=0.0, metavar="S", help="windowed-sinc smoothing 0..1 (default: 0)")
    p.add_argument("--decimate", type=float, default=0.0, metavar="F", help="fraction of triangles to remove, 0..0.9 (default: 0)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch threads per worker (default: torch's choice with 1 worker, cores/N with N local workers)")
    p.add_argument("--progress-format", choices=["text", "json", "none"], default="text",
                   help="a bar over cases on stderr (text), one JSON object per case on stdout (json), or none")
    p.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    import json

    from .batch import BatchSettings, run_batch
    from .errors import InputError

    if args.scheduler is not None and args.workers is not None:
        raise InputError("--workers and --scheduler exclude each other: an existing cluster has its own workers.")
    bar = None

    def on_start(total: int) -> None:
        nonlocal bar
        if args.progress_format == "text":
            from tqdm import tqdm

            bar = tqdm(total=total, desc="cases", unit="case", file=sys.stderr, dynamic_ncols=True)

    def on_case(row: dict, report) -> None:
        if bar is not None:
            bar.set_postfix(ok=report.ok, failed=report.failed, skipped=report.skipped, refresh=False)
            bar.update(1)
        elif args.progress_format == "json":
            print(json.dumps({"case_id": row["case_id"], "status": row["status"], "error": row.get("error", ""),
                              "completed": len(report.rows), "ok": report.ok, "failed": report.failed,
                              "skipped": report.skipped, "elapsed_s": round(report.seconds, 2)}), flush=True)

    settings = BatchSettings(model=str(args.model) if args.model else None, device=args.device,
                             resolution_mm=args.resolution, smoothing=args.smoothing, decimate=args.decimate,
                             measure=args.measure, torch_threads=args.threads)
    try:
        report = run_batch(args.manifest, args.out, settings, workers=1 if args.workers is None else args.workers, scheduler=args.scheduler,
                           redo=args.redo, on_start=on_start, on_case=on_case)
    finally:
        if bar is not None:
            bar.close()
    if args.progress_format == "json":
        summary = {"summary_csv": str(report.summary_csv), "ok": report.ok, "failed": report.failed,
                   "skipped": report.skipped, "seconds": round(report.seconds, 2)}
        print(json.dumps({"done": True, "summary": summary}), flush=True)
    else:
        print(f"{report.ok} ok, {report.failed} failed, {report.skipped} skipped in {report.seconds:.0f} s; "
              f"summary: {report.summary_csv}")
        for case_id, error in report.failures:
            print(f"  failed {case_id}: {error}", file=sys.stderr)
    return 1 if report.failed else 0


# ------------------------------------------------------------------------------------------ registry
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_phantom, _add_segment, _add_evaluate, _add_measure, _add_train, _add_prepare, _add_demo, _add_batch]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nudf",
        description="NUDF Segmentation: segment the left atrial appendage (LAA) from cardiac CT as an open "
        "surface mesh with a Neural Unsigned Distance Field.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    name = args.func.__name__.removeprefix("_run_")
    on_term = _sigterm_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except NUDFError as exc:
        print(f"nudf {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an OS refusal no check foresaw (a file vanished, a device failed): one line
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"nudf {name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"nudf: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        on_term.restore()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup (temporary files, partial outputs) runs."""


class _sigterm_as_interrupt:
    """Turn SIGTERM into :class:`_Terminated` while a command runs (main thread only); restore() undoes it."""

    def __init__(self) -> None:
        import signal
        import threading

        self._previous = None
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum, frame) -> None:
        raise _Terminated()

    def restore(self) -> None:
        import signal

        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
