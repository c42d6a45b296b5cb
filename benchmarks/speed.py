"""Speed benchmark: one full-size CT segmented end to end, with peak memory and FLOP efficiency.

Not a test: it prints Markdown tables. Example::

    python benchmarks/speed.py                         # bundled model, phantom seed 0 (512×512×280), 3 runs
    python benchmarks/speed.py --model runs/nudf_laa.pt --runs 5 --threads 2

What is timed: a fresh Python process per run reads the CT from a NIfTI file, runs ``NUDFCore.infer.segment``
(default options: 0.25 mm surface, two passes) from the phantom's seed, and writes the STL — so each run's
peak RSS (``VmHWM``, see ``benchmarks/memory.py``) is its own. Reported: median (min–max) over ``--runs`` of
the process wall time (Python start and imports included), the in-process end-to-end time (read → STL) and
every stage of ``result.timings``; the decoder's queries per second over the surface stages; the model's
FLOPs per query counted from its config; the achieved GFLOP/s both over the surface stages (meshing
included) and in a pure decoder micro-benchmark, against this machine's measured float32 matmul peak.

The CT is ``NUDFCore.phantom.generate_case(seed, size="full")`` written once to ``--work`` (reused after).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


# ------------------------------------------------------------------------------------------ FLOPs
def flops_per_query(config) -> dict[str, float]:
    """Forward FLOPs (multiply + add = 2) of one decoder query, counted from a :class:`ModelConfig`.

    ``sampling``: trilinear interpolation of every feature grid (input + each level) at the point and its
    6 displaced copies — 8 corner weights per channel; ``mlp``: the pointwise decoder (1×1 convolutions,
    feature size → widths → 1, with biases).
    """
    channels = 1 + sum(config.channels)
    sampling = 7 * channels * 8 * 2
    widths = [config.feature_size, *config.decoder, 1]
    mlp = sum(2 * a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return {"sampling": float(sampling), "mlp": float(mlp), "total": float(sampling + mlp),
            "feature_size": float(config.feature_size)}


def encoder_flops(config) -> float:
    """Forward FLOPs of the encoder on one crop (3×3×3 convolutions; norms and pooling neglected)."""
    n = config.crop_n
    total = 2 * 27 * 1 * config.channels[0] * n ** 3
    for i, (cin, cout) in enumerate(zip(config.channels[:-1], config.channels[1:]), start=1):
        vox = (n // 2 ** i) ** 3
        total += 2 * 27 * vox * (cin * cout + cout * cout)
    return float(total)


def matmul_peak_gflops(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of ``torch.matmul`` on two ``size``² matrices (this machine's practical peak)."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


def decoder_throughput(model_path: str, ct_path: Path, seed_lps, threads: int, n_points: int = 262_144,
                       repeats: int = 3) -> dict[str, float]:
    """Pure decoder queries/s (no meshing): random points in the crop, the engine's chunked ``query``."""
    import torch

    from NUDFCore.crop import CropGeometry, HUWindow, extract_crop
    from NUDFCore.io import read_volume
    from NUDFCore.model import load_checkpoint

    torch.set_num_threads(threads)
    model = load_checkpoint(model_path, device="cpu")
    cfg = model.config
    geom = CropGeometry(np.asarray(seed_lps, float), cfg.crop_size_mm, cfg.crop_n)
    crop = extract_crop(read_volume(ct_path), geom, HUWindow.from_value(cfg.hu_window))
    with torch.no_grad():
        x = torch.from_numpy(crop)[None, None]
        t0 = time.perf_counter()
        feats = model.encode(x)
        encode_s = time.perf_counter() - t0
    pts = torch.rand(1, n_points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model.query(feats, pts[:, :4096])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.query(feats, pts, chunk_size=50_000)
        best = min(best, time.perf_counter() - t0)
    return {"queries_per_s": n_points / best, "encode_s": encode_s}


# ------------------------------------------------------------------------------------------ worker
def worker(spec: dict) -> dict:
    """One end-to-end run (in a fresh process): NIfTI → segment → STL."""
    t_start = time.perf_counter()
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from NUDFCore.infer import SegmentOptions, segment
    from NUDFCore.io import read_volume, write_mesh

    from memory import peak_rss_mb

    t_imports = time.perf_counter() - t_start
    t0 = time.perf_counter()
    ct = read_volume(spec["ct"])
    t_read = time.perf_counter() - t0
    opts = SegmentOptions(resolution_mm=spec["resolution"], device=spec["device"])
    r = segment(ct, seed_lps=spec["seed_lps"], model=spec["model"], options=opts)
    t0 = time.perf_counter()
    write_mesh(r.mesh_lps, spec["stl"], overwrite=True)
    t_write = time.perf_counter() - t0
    out = {
        "imports_s": t_imports, "read_s": t_read, "write_s": t_write,
        "end_to_end_s": t_read + r.timings["total"] + t_write,
        "timings": r.timings, "quality": {k: v for k, v in r.quality.items() if isinstance(v, (int, float, str))},
        "peak_rss_mb": peak_rss_mb(), "ct_shape": list(ct.array.shape[::-1]),
        "ct_spacing": [float(s) for s in ct.spacing],
        "stl_bytes": Path(spec["stl"]).stat().st_size,
    }
    if torch.cuda.is_available() and "cuda" in str(r.quality.get("device", "")):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(spec)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"worker failed (exit {p.returncode}): {tail}")
    res = json.loads(lines[-1])
    res["process_wall_s"] = wall
    return res


# ------------------------------------------------------------------------------------------ tables
def _med(values) -> str:
    values = [float(v) for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--phantom-seed", type=int, default=0, help="full-size phantom seed (0: 512×512×280)")
    p.add_argument("--ct", type=Path, default=None, help="use this CT instead of a phantom (needs --seed-lps)")
    p.add_argument("--seed-lps", type=float, nargs=3, default=None)
    p.add_argument("--work", type=Path, default=None, help="folder for the phantom and the STLs "
                   "(default: <tmp>/nudf_speed_<seed>)")
    p.add_argument("--resolution", type=float, default=0.25, help="surface grid in mm (segment's default 0.25)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return 0

    import torch

    from NUDFCore.model import read_checkpoint, ModelConfig

    if args.model is None:
        from NUDFCore.infer import default_model_path

        args.model = str(default_model_path())
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    work = args.work or Path(tempfile.gettempdir()) / f"nudf_speed_{args.phantom_seed}"
    work.mkdir(parents=True, exist_ok=True)
    gen_note = ""
    if args.ct is not None:
        if args.seed_lps is None:
            p.error("--ct needs --seed-lps")
        ct_path, seed_lps, gt_mesh = args.ct, list(args.seed_lps), None
    else:
        from NUDFCore import phantom

        case_dir = work / "case"
        ct_path = case_dir / "ct.nii.gz"
        if not (case_dir / "meta.json").exists():
            t0 = time.perf_counter()
            phantom.write_case(phantom.generate_case(args.phantom_seed, size="full"), case_dir, overwrite=True)
            gen_note = f" (generated in {time.perf_counter() - t0:.0f} s, not timed below)"
        meta = json.loads((case_dir / "meta.json").read_text())
        seed_lps = meta["seed_lps"]
        gt_mesh = case_dir / "laa.vtp"

    spec = {"ct": str(ct_path), "seed_lps": seed_lps, "model": args.model, "resolution": args.resolution,
            "device": args.device, "threads": threads}
    runs = []
    for i in range(args.runs):
        r = run_worker(dict(spec, stl=str(work / f"laa_run{i}.stl")), args.timeout)
        print(f"run {i + 1}/{args.runs}: {r['end_to_end_s']:.2f} s end to end, {r['process_wall_s']:.2f} s process, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
        runs.append(r)

    data = read_checkpoint(args.model)
    cfg = ModelConfig.from_dict(dict(data["config"]))
    fl = flops_per_query(cfg)
    enc = encoder_flops(cfg)
    peak = matmul_peak_gflops(threads)
    micro = decoder_throughput(args.model, ct_path, seed_lps, threads)

    first = runs[0]
    shape = "×".join(str(s) for s in first["ct_shape"])
    spacing = "×".join(f"{s:.2f}" for s in first["ct_spacing"])
    from unet_baseline import machine

    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [f"Command: `{command}`", f"Machine: {machine()}", "",
           f"CT: {shape} voxels, spacing {spacing} mm "
           f"({'phantom seed ' + str(args.phantom_seed) + gen_note if args.ct is None else ct_path}); model "
           f"`{args.model}` (crop {cfg.crop_n}³ of {cfg.crop_size_mm:.0f} mm, channels {cfg.channels}, decoder "
           f"{cfg.decoder}); surface resolution {args.resolution} mm; {len(runs)} runs, each a fresh process.", "",
           "### End to end (median (min–max) over runs)", "",
           "| what | seconds |", "|---|---|",
           f"| process wall (Python start + imports + read + segment + write STL) | {_med(r['process_wall_s'] for r in runs)} |",
           f"| end to end in process (read NIfTI → segment → STL written) | {_med(r['end_to_end_s'] for r in runs)} |",
           f"| imports (torch, NUDFCore, VTK, SimpleITK) | {_med(r['imports_s'] for r in runs)} |",
           f"| read NIfTI | {_med(r['read_s'] for r in runs)} |"]
    stages = list(first["timings"])
    for st in stages:
        out.append(f"| segment: {st} | {_med(r['timings'].get(st, 0.0) for r in runs)} |")
    out.append(f"| write STL | {_med(r['write_s'] for r in runs)} |")
    out += ["", "| peak RSS MB (whole worker process) | " + _med(r["peak_rss_mb"] for r in runs) + " |", "|---|---|"]
    if "peak_gpu_mb" in first:
        out.append(f"| peak GPU MB | {_med(r['peak_gpu_mb'] for r in runs)} |")
    q = first["quality"]
    out.append(f"| mesh | {q.get('n_vertices')} vertices, {q.get('n_faces')} faces, "
               f"{q.get('boundary_loops')} boundary loop(s), STL {first['stl_bytes'] / 1e6:.1f} MB |")

    # -- throughput and FLOPs ----------------------------------------------------------------------
    def surf_s(r):
        return r["timings"].get("surface", 0.0) + r["timings"].get("surface (first pass)", 0.0)

    def value_q(r):  # segment's n_queries also counts the quality stage's per-vertex queries
        return r["quality"]["n_queries"] - r["quality"]["n_vertices"]

    qps = [value_q(r) / surf_s(r) for r in runs]
    gflops = [(value_q(r) * fl["total"] + 3 * r["quality"]["n_grad_queries"] * fl["total"]) / surf_s(r) / 1e9
              for r in runs]
    micro_gflops = micro["queries_per_s"] * fl["total"] / 1e9
    enc_gflops = enc / max(micro["encode_s"], 1e-9) / 1e9
    out += ["", "### Decoder throughput vs the machine's FLOP limit", "",
            f"FLOPs per query (forward, counted from the config): trilinear sampling of {1 + sum(cfg.channels)} "
            f"channels × 7 points = {fl['sampling']:.0f}, MLP {cfg.feature_size}→{'→'.join(map(str, cfg.decoder))}→1 "
            f"= {fl['mlp']:.0f}; **{fl['total'] / 1e3:.1f} kFLOP/query** (a gradient query ≈ 3×). Encoder: "
            f"{enc / 1e9:.2f} GFLOP per crop.", "",
            "| figure | value |", "|---|---|",
            f"| value queries in the surface stages (median) | {statistics.median(value_q(r) for r in runs):,.0f} |",
            f"| gradient queries (median) | {statistics.median(r['quality']['n_grad_queries'] for r in runs):,.0f} |",
            f"| dense-grid equivalent at {args.resolution} mm | {statistics.median(r['quality']['n_dense_queries'] for r in runs):,.0f} |",
            f"| queries/s over the surface stages (meshing included) | {statistics.median(qps):,.0f} |",
            f"| achieved GFLOP/s over the surface stages | {statistics.median(gflops):.2f} |",
            f"| pure decoder queries/s (262 144 random points, chunked `query`) | {micro['queries_per_s']:,.0f} |",
            f"| pure decoder GFLOP/s | {micro_gflops:.2f} |",
            f"| encoder GFLOP/s ({micro['encode_s']:.2f} s per crop) | {enc_gflops:.2f} |",
            f"| machine float32 matmul peak (4096², {threads} threads) | {peak:.1f} GFLOP/s |",
            f"| decoder efficiency: pure / surface stages | {100 * micro_gflops / peak:.0f} % / "
            f"{100 * statistics.median(gflops) / peak:.0f} % of the matmul peak |"]
    if gt_mesh is not None and gt_mesh.exists():
        from NUDFCore.io import read_mesh
        from NUDFCore.metrics import surface_metrics

        m = surface_metrics(read_mesh(work / "laa_run0.stl"), read_mesh(gt_mesh),
                            spacing_mm=float(np.mean(first["ct_spacing"])))
        out += ["", f"Sanity check against the phantom's GT: MSD {m.msd_mm:.3f} mm, HD95 {m.hd95_mm:.2f} mm, "
                f"false area {100 * m.false_area_fraction:.1f} %."]
    text = "\n".join(out)
    print("\n" + text)
    (work / "results_speed.md").write_text(text + "\n")
    (work / "runs.json").write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
