"""Speed benchmark: one full-size CT segmented end to end, this tree against a baseline commit, interleaved.

Not a test: it prints Markdown tables. Example::

    python benchmarks/speed.py --baseline 57785f4 --runs 3 --threads 2   # old vs new, 512×512×280, 0.25 mm
    python benchmarks/speed.py --baseline 57785f4 --accuracy 4           # + MSD on 4 held-out compact phantoms
    python benchmarks/speed.py --model runs/nudf_laa.pt --runs 5         # this tree only

What is timed: a fresh Python process per run reads the CT from a NIfTI file, runs ``NUDFCore.infer.segment``
(default options: 0.25 mm surface, two passes) from the phantom's seed, and writes the STL — so each run's
peak RSS (``VmHWM``, see ``benchmarks/memory.py``) is its own. ``--baseline REF`` exports ``NUDFCore/`` of that
commit (``git archive``) and runs it the same way with the same model file, alternating baseline and this tree
run by run, so both see the same machine load (reported before and after: this machine is shared, and a
ratio of interleaved runs is fairer than any absolute figure). Reported: median (min–max) over ``--runs`` of
the process wall time (Python start and imports included), the in-process end-to-end time (read → STL) and
every stage of ``result.timings``; the decoder's queries per second over the surface stages; the model's
FLOPs per query counted from its config; the achieved GFLOP/s both over the surface stages (meshing
included) and in a pure decoder micro-benchmark, against this machine's measured float32 matmul peak.
``--accuracy N``: the mean surface distance of both on N held-out compact phantoms (seeds from
``--accuracy-seed``, never used in training), also interleaved.

The CT is ``NUDFCore.phantom.generate_case(seed, size="full")`` written once to ``--work`` (reused after).
"""
from __future__ import annotations

import argparse
import json
import os
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
    from NUDFCore.decoder import CPU_CHUNK, fast_decoder

    fast = fast_decoder(model, feats)
    fast_best = float("inf")
    if fast is not None:
        fast.query(pts[0, :4096])
        for _ in range(repeats):
            t0 = time.perf_counter()
            fast.query(pts[0], chunk_size=CPU_CHUNK)
            fast_best = min(fast_best, time.perf_counter() - t0)
    return {"queries_per_s": n_points / best, "fast_queries_per_s": n_points / fast_best, "encode_s": encode_s}


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
    import NUDFCore

    out = {
        "nudfcore": str(Path(NUDFCore.__file__).resolve().parent),
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


def run_worker(spec: dict, timeout: float, code_root: Path | None = None) -> dict:
    """Run :func:`worker` in a fresh process; ``code_root``: a folder holding another ``NUDFCore`` to run."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(spec)]
    env = dict(os.environ)
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=str(code_root) if code_root is not None else None)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"worker failed (exit {p.returncode}): {tail}")
    res = json.loads(lines[-1])
    res["process_wall_s"] = wall
    expected = (code_root / "NUDFCore") if code_root is not None else (HERE.parent / "NUDFCore")
    if Path(res["nudfcore"]) != expected.resolve():
        raise RuntimeError(f"the worker ran {res['nudfcore']}, not {expected}")
    return res


def export_baseline(ref: str, dest: Path) -> tuple[Path, str]:
    """``NUDFCore/`` of commit ``ref`` extracted into ``dest`` (``git archive``); returns (dest, full hash)."""
    import io
    import tarfile

    root = HERE.parent
    full = subprocess.run(["git", "-C", str(root), "rev-parse", ref], capture_output=True, text=True, check=True
                          ).stdout.strip()
    data = subprocess.run(["git", "-C", str(root), "archive", full, "NUDFCore"], capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest, full


def load_line() -> str:
    """The 1/5/15-minute load averages and the CPU count (the machine is shared)."""
    try:
        a, b, c = os.getloadavg()
        return f"load average {a:.2f} / {b:.2f} / {c:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unavailable"


# ------------------------------------------------------------------------------------------ tables
def _med(values) -> str:
    values = [float(v) for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def _phantom_case(seed: int, size: str, folder: Path) -> tuple[Path, list, Path, str]:
    """Generate a phantom once into ``folder``; returns (ct path, seed LPS, GT mesh path, generation note)."""
    from NUDFCore import phantom

    note = ""
    if not (folder / "meta.json").exists():
        t0 = time.perf_counter()
        phantom.write_case(phantom.generate_case(seed, size=size), folder, overwrite=True)
        note = f" (generated in {time.perf_counter() - t0:.0f} s, not timed below)"
    meta = json.loads((folder / "meta.json").read_text())
    return folder / "ct.nii.gz", meta["seed_lps"], folder / "laa.vtp", note


def _msd(stl: Path, gt: Path) -> float:
    from NUDFCore.io import read_mesh
    from NUDFCore.metrics import surface_metrics

    return float(surface_metrics(read_mesh(stl), read_mesh(gt)).msd_mm)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model), used by both trees")
    p.add_argument("--baseline", default=None, metavar="REF",
                   help="git commit/branch to compare with (its NUDFCore/ runs interleaved with this tree's)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--phantom-seed", type=int, default=0, help="full-size phantom seed (0: 512×512×280)")
    p.add_argument("--ct", type=Path, default=None, help="use this CT instead of a phantom (needs --seed-lps)")
    p.add_argument("--seed-lps", type=float, nargs=3, default=None)
    p.add_argument("--work", type=Path, default=None, help="folder for the phantoms, the baseline and the STLs "
                   "(default: <tmp>/nudf_speed_<seed>)")
    p.add_argument("--resolution", type=float, default=0.25, help="surface grid in mm (segment's default 0.25)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--accuracy", type=int, default=0, metavar="N",
                   help="also compare the mean surface distance on N held-out compact phantoms")
    p.add_argument("--accuracy-seed", type=int, default=6000, help="first seed of those phantoms")
    p.add_argument("--skip-micro", action="store_true", help="skip the decoder/matmul micro-benchmarks")
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
    args.model = str(Path(args.model).resolve())
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    work = args.work or Path(tempfile.gettempdir()) / f"nudf_speed_{args.phantom_seed}"
    work.mkdir(parents=True, exist_ok=True)
    if args.ct is not None:
        if args.seed_lps is None:
            p.error("--ct needs --seed-lps")
        ct_path, seed_lps, gt_mesh, gen_note = args.ct, list(args.seed_lps), None, ""
    else:
        ct_path, seed_lps, gt_mesh, gen_note = _phantom_case(args.phantom_seed, "full", work / "case")
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    base_hash = None
    if args.baseline:
        root, base_hash = export_baseline(args.baseline, work / f"baseline_{args.baseline.replace('/', '_')}")
        trees.append((f"baseline {base_hash[:7]}", root))

    load_before = load_line()
    print(f"{load_before}", file=sys.stderr)
    spec = {"ct": str(ct_path), "seed_lps": seed_lps, "model": args.model, "resolution": args.resolution,
            "device": args.device, "threads": threads}
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for i in range(args.runs):
        order = trees if i % 2 == 0 else trees[::-1]  # alternate who goes first
        for name, root in order:
            tag = "new" if root is None else "base"
            r = run_worker(dict(spec, stl=str(work / f"laa_{tag}_run{i}.stl")), args.timeout, root)
            r["stl"] = str(work / f"laa_{tag}_run{i}.stl")
            print(f"run {i + 1}/{args.runs} {name}: {r['end_to_end_s']:.2f} s end to end, "
                  f"{r['process_wall_s']:.2f} s process, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
            runs[name].append(r)
    accuracy: dict[str, list[float]] = {name: [] for name, _ in trees}
    acc_cases = []
    for j in range(args.accuracy):
        seed = args.accuracy_seed + j
        cpath, cseed, cgt, _ = _phantom_case(seed, "compact", work / f"heldout_{seed}")
        acc_cases.append(seed)
        order = trees if j % 2 == 0 else trees[::-1]
        for name, root in order:
            stl = work / f"heldout_{seed}_{'new' if root is None else 'base'}.stl"
            r = run_worker(dict(spec, ct=str(cpath), seed_lps=cseed, stl=str(stl)), args.timeout, root)
            accuracy[name].append(_msd(stl, cgt))
            print(f"held-out phantom {seed} {name}: MSD {accuracy[name][-1]:.3f} mm, "
                  f"{r['end_to_end_s']:.2f} s", file=sys.stderr)
    load_after = load_line()

    data = read_checkpoint(args.model)
    cfg = ModelConfig.from_dict(dict(data["config"]))
    fl = flops_per_query(cfg)
    enc = encoder_flops(cfg)
    first = runs["this tree"][0]
    shape = "×".join(str(s) for s in first["ct_shape"])
    spacing = "×".join(f"{s:.2f}" for s in first["ct_spacing"])
    from unet_baseline import machine

    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    names = [name for name, _ in trees][::-1]  # baseline first, then this tree
    out = [f"Command: `{command}`", f"Machine: {machine()}", f"Load: before {load_before}; after {load_after}.",
           "", f"CT: {shape} voxels, spacing {spacing} mm "
           f"({'phantom seed ' + str(args.phantom_seed) + gen_note if args.ct is None else ct_path}); model "
           f"`{Path(args.model).name}` (crop {cfg.crop_n}³ of {cfg.crop_size_mm:.0f} mm, channels {cfg.channels}, "
           f"decoder {cfg.decoder}); surface resolution {args.resolution} mm; {args.runs} runs per tree, each a "
           f"fresh process{', baseline and this tree alternating' if base_hash else ''}.", "",
           "### End to end (median (min–max) over runs)", "",
           "| what | " + " | ".join(names) + (" | speed-up |" if base_hash else ""),
           "|---|" + "---|" * len(names) + ("---|" if base_hash else "")]

    def row(label, fn, speed: str = "time"):
        """speed: "time" (ratio baseline/this), "rate" (this/baseline) or "none" (no ratio)."""
        vals = [[fn(r) for r in runs[n]] for n in names]
        cells = [_med(v) for v in vals]
        ratio = ""
        if base_hash:
            b, t = statistics.median(vals[0]), statistics.median(vals[1])
            if speed == "none" or min(b, t) <= 0:
                ratio = " — |"
            else:
                ratio = f" {(b / t if speed == 'time' else t / b):.2f}× |"
        out.append(f"| {label} | " + " | ".join(cells) + (" |" + ratio if base_hash else " |"))

    row("process wall (Python start + imports + read + segment + write STL)", lambda r: r["process_wall_s"])
    row("**end to end in process (read NIfTI → segment → STL written)**", lambda r: r["end_to_end_s"])
    row("imports (torch, NUDFCore, VTK, SimpleITK)", lambda r: r["imports_s"])
    row("read NIfTI", lambda r: r["read_s"])
    stages = list(dict.fromkeys(st for n in names for st in runs[n][0]["timings"]))
    for st in stages:
        row(f"segment: {st}", lambda r, st=st: r["timings"].get(st, 0.0))
    row("write STL", lambda r: r["write_s"])
    row("peak RSS MB (whole worker process)", lambda r: r["peak_rss_mb"], "none")

    def surf_s(r):
        return r["timings"].get("surface", 0.0) + r["timings"].get("surface (first pass)", 0.0)

    row("decoder queries, all stages", lambda r: r["quality"]["n_queries"], "none")
    row("queries/s over the surface stages (meshing included)", lambda r: r["quality"]["n_queries"] / surf_s(r),
        "rate")
    for n in names:
        q = runs[n][0]["quality"]
        out.append(f"| mesh ({n}) | {q.get('n_vertices')} vertices, {q.get('n_faces')} faces, "
                   f"{q.get('boundary_loops')} boundary loop(s) |" + " |" * (len(names) - 1 + bool(base_hash)))
    if gt_mesh is not None and gt_mesh.exists():
        cells = [f"{_msd(Path(runs[n][0]['stl']), gt_mesh):.3f}" for n in names]
        out.append("| MSD to the phantom's GT, mm (first run) | " + " | ".join(cells) + (" | |" if base_hash else " |"))
    if acc_cases:
        out += ["", f"### Mean surface distance on held-out compact phantoms (seeds {acc_cases[0]}–{acc_cases[-1]})",
                "", "| phantom | " + " | ".join(names) + (" | difference |" if base_hash else " |"),
                "|---|" + "---|" * len(names) + ("---|" if base_hash else "")]
        for j, seed in enumerate(acc_cases):
            vals = [accuracy[n][j] for n in names]
            diff = f" {vals[-1] - vals[0]:+.3f} |" if base_hash else ""
            out.append(f"| {seed} | " + " | ".join(f"{v:.3f}" for v in vals) + (" |" + diff if base_hash else " |"))
        means = [float(np.mean(accuracy[n])) for n in names]
        diff = f" **{means[-1] - means[0]:+.3f}** |" if base_hash else ""
        out.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + (" |" + diff if base_hash else " |"))

    if not args.skip_micro:
        peak = matmul_peak_gflops(threads)
        micro = decoder_throughput(args.model, ct_path, seed_lps, threads)
        this = runs["this tree"]
        gflops = [r["quality"]["n_queries"] * fl["total"] / surf_s(r) / 1e9 for r in this]
        micro_gflops = micro["queries_per_s"] * fl["total"] / 1e9
        fast_gflops = micro["fast_queries_per_s"] * fl["total"] / 1e9
        out += ["", "### Decoder throughput vs the machine's FLOP limit (this tree)", "",
                f"FLOPs per query (forward, counted from the config): trilinear sampling of {1 + sum(cfg.channels)} "
                f"channels × 7 points = {fl['sampling']:.0f}, MLP {cfg.feature_size}→{'→'.join(map(str, cfg.decoder))}→1 "
                f"= {fl['mlp']:.0f}; **{fl['total'] / 1e3:.1f} kFLOP/query**. Encoder: {enc / 1e9:.2f} GFLOP per crop.", "",
                "| figure | value |", "|---|---|",
                f"| reference decoder (`NUDFNet.query`, 262 144 random points) | {micro['queries_per_s']:,.0f} queries/s, "
                f"{micro_gflops:.1f} GFLOP/s |",
                f"| fast decoder (`NUDFCore.decoder`, same points, same numbers) | {micro['fast_queries_per_s']:,.0f} "
                f"queries/s, {fast_gflops:.1f} GFLOP/s |",
                f"| achieved over the surface stages (meshing included) | {statistics.median(gflops):.1f} GFLOP/s |",
                f"| encoder ({micro['encode_s']:.2f} s per crop) | {enc / max(micro['encode_s'], 1e-9) / 1e9:.1f} GFLOP/s |",
                f"| machine float32 matmul peak (4096², {threads} threads) | {peak:.1f} GFLOP/s |"]
    text = "\n".join(out)
    print("\n" + text)
    (work / "results_speed.md").write_text(text + "\n")
    (work / "runs.json").write_text(json.dumps({"runs": runs, "accuracy": accuracy, "cases": acc_cases}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
