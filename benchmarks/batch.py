"""Cohort throughput: ``nudf batch`` on 8 compact phantoms, serial in-process vs a local Dask cluster.

Not a test: it prints a Markdown table. Example::

    python benchmarks/batch.py                         # 8 compact phantoms, 0.25 mm, serial vs 2 Dask workers
    python benchmarks/batch.py --workers 2 4 --resolution 0.5 --loop

Each mode is one fresh ``nudf batch MANIFEST --out DIR --redo`` process, timed from the outside (Python start,
imports, the Dask cluster's start and the model loads included), so cases/minute is what a user of the
command gets. ``--loop`` adds today's alternative, a shell loop of ``nudf segment`` (one process per case).
The meshes of every mode are compared with the serial run's (largest vertex difference, mm).

The machine's load is sampled every 2 s during each mode (1-minute load average, and the share of CPU time
spent by processes other than the benchmark's) and reported with the figures: on a shared machine the
parallel speed-up is bounded by the cores other work leaves free. The phantoms are
``NUDFCore.phantom.generate_case(seed, size="compact")``, written once into ``--work`` (reused after).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def make_cohort(work: Path, count: int, first_seed: int) -> Path:
    """Write ``count`` compact phantoms (seeds first_seed…) and their manifest (reused when present)."""
    from NUDFCore.phantom import generate_case, write_case

    rows = ["case_id,ct,seed_lps,gt"]
    for i in range(count):
        seed = first_seed + i
        folder = work / "phantoms" / f"phantom_{seed:04d}"
        if not (folder / "meta.json").is_file():
            write_case(generate_case(seed, size="compact"), folder, overwrite=True)
        meta = json.loads((folder / "meta.json").read_text())
        seed_txt = ",".join(f"{v:.6f}" for v in meta["seed_lps"])
        rows.append(f'{folder.name},{folder / "ct.nii.gz"},"{seed_txt}",{folder / "laa.vtp"}')
    manifest = work / "cohort.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


class LoadSampler:
    """Samples the 1-minute load average and the CPU share used by processes outside ``own_root``'s tree."""

    def __init__(self, period_s: float = 2.0) -> None:
        self.period = period_s
        self.loads: list[float] = []
        self.other_cpu: list[float] = []
        self.own_cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.root_pid: int | None = None

    def _own_pids(self) -> set[int]:
        import psutil

        pids = {os.getpid()}
        if self.root_pid is not None:
            try:
                root = psutil.Process(self.root_pid)
                pids |= {self.root_pid} | {c.pid for c in root.children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
        return pids

    def _cpu_times(self) -> tuple[float, float]:
        """(all processes' CPU seconds, ours) from /proc — cheap enough every 2 s."""
        import psutil

        ours_pids, total, ours = self._own_pids(), 0.0, 0.0
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            t = proc.info["cpu_times"]
            if t is None:
                continue
            s = t.user + t.system
            total += s
            if proc.info["pid"] in ours_pids:
                ours += s
        return total, ours

    def _run(self) -> None:
        prev = self._cpu_times()
        prev_t = time.monotonic()
        while not self._stop.wait(self.period):
            self.loads.append(os.getloadavg()[0])
            now, now_t = self._cpu_times(), time.monotonic()
            dt = max(now_t - prev_t, 1e-6)
            self.other_cpu.append(max(0.0, ((now[0] - prev[0]) - (now[1] - prev[1])) / dt))
            self.own_cpu.append(max(0.0, (now[1] - prev[1]) / dt))
            prev, prev_t = now, now_t

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        return {"load_avg_1min": mean(self.loads), "other_processes_cores": mean(self.other_cpu),
                "own_cores": mean(self.own_cpu)}


def run_mode(cmd: list[str], env: dict) -> tuple[float, dict, str]:
    """Run one command; return its wall time, the machine load while it ran and its stderr tail."""
    with LoadSampler() as sampler:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler.root_pid = proc.pid
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    return wall, sampler.summary(), err[-500:]


def batch_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def compare_meshes(a_dir: Path, b_dir: Path, case_ids: list[str], name: str = "laa.vtp") -> str:
    """How the same cases' meshes of two runs agree: same triangles and largest vertex difference, else the
    largest distance of a vertex of either mesh to the other surface (mm)."""
    from NUDFCore.io import polydata_points, polydata_triangles, read_mesh
    from NUDFCore.meshtools import cell_locator, closest_points

    same, worst_vertex, worst_surface = 0, 0.0, 0.0
    for c in case_ids:
        a, b = read_mesh(a_dir / c / name), read_mesh(b_dir / c / name)
        pa, pb = polydata_points(a), polydata_points(b)
        if pa.shape == pb.shape and np.array_equal(polydata_triangles(a), polydata_triangles(b)):
            same += 1
            worst_vertex = max(worst_vertex, float(np.abs(pa - pb).max()))
        else:
            d_ab = closest_points(cell_locator(b), pa)[0].max()
            d_ba = closest_points(cell_locator(a), pb)[0].max()
            worst_surface = max(worst_surface, float(d_ab), float(d_ba))
    text = f"{same} of {len(case_ids)} meshes with the same triangles (largest vertex difference {worst_vertex:.2g} mm)"
    if same < len(case_ids):
        text += f"; the others differ in tessellation, largest vertex-to-surface distance {worst_surface:.2g} mm"
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=8, help="number of compact phantoms (default: 8)")
    p.add_argument("--first-seed", type=int, default=5000, help="phantom seeds first-seed, +1, ... (default: 5000)")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="Dask worker counts to time (default: 2)")
    p.add_argument("--resolution", type=float, default=0.25, help="surface grid in mm (default: 0.25, as nudf)")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--loop", action="store_true", help="also time a loop of nudf segment, one process per case")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nudf_batch_bench")
    args = p.parse_args(argv)

    from NUDFCore.infer import default_model_path

    model = str(Path(args.model) if args.model else default_model_path())
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = make_cohort(args.work, args.cases, args.first_seed)
    print(f"cohort: {manifest} ({args.cases} compact phantoms, {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    case_ids = [r["case_id"] for r in csv.DictReader(open(manifest, newline=""))]
    env = dict(os.environ)
    nudf = [sys.executable, "-m", "NUDFCore"]
    common = ["--model", model, "--device", "cpu", "--resolution", str(args.resolution), "--progress-format", "none",
              "--redo"]

    modes: list[dict] = []
    serial_out = args.work / "out_serial"
    wall, load, _ = run_mode(nudf + ["batch", str(manifest), "--out", str(serial_out), *common], env)
    modes.append({"mode": "nudf batch, serial in-process", "workers": 1, "torch_threads": "torch default",
                  "wall_s": wall, **load, "out": serial_out})
    for n in args.workers:
        out = args.work / f"out_dask{n}"
        wall, load, _ = run_mode(nudf + ["batch", str(manifest), "--out", str(out), "--workers", str(n), *common], env)
        modes.append({"mode": f"nudf batch --workers {n} (Dask LocalCluster)", "workers": n,
                      "torch_threads": max(1, (os.cpu_count() or 1) // n), "wall_s": wall, **load, "out": out})
    if args.loop:
        loop_out = args.work / "out_loop"
        loop_out.mkdir(exist_ok=True)
        rows = list(csv.DictReader(open(manifest, newline="")))
        script = "; ".join(
            f"{' '.join(nudf)} segment {r['ct']} --seed-lps={r['seed_lps']} --out {loop_out / r['case_id']}.vtp "
            f"--model {model} --device cpu --resolution {args.resolution} --progress-format none --force"
            for r in rows)
        wall, load, _ = run_mode(["bash", "-c", script], env)
        modes.append({"mode": "shell loop of nudf segment", "workers": 1, "torch_threads": "torch default",
                      "wall_s": wall, **load, "out": None})

    base = modes[0]["wall_s"]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"{args.cases} compact phantoms (seeds {args.first_seed}–{args.first_seed + args.cases - 1}), "
        f"{args.resolution:g} mm grid, model {Path(model).name}; {stamp}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads as listed.",
        "",
        "| mode | workers × torch threads | wall (s) | cases/min | vs serial | median case (s) | load avg (1 min) "
        "| cores used by other processes | cores this mode obtained | CPU s per case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in modes:
        per_case = ""
        if m["out"] is not None:
            per_case = f"{statistics.median(float(r['total_s']) for r in batch_rows(m['out'])):.1f}"
        lines.append(
            f"| {m['mode']} | {m['workers']} × {m['torch_threads']} | {m['wall_s']:.0f} | "
            f"{60 * args.cases / m['wall_s']:.2f} | {base / m['wall_s']:.2f}× | {per_case} | "
            f"{m['load_avg_1min']:.1f} | {m['other_processes_cores']:.1f} | {m['own_cores']:.2f} | "
            f"{m['own_cores'] * m['wall_s'] / args.cases:.0f} |")
    for m in modes[1:]:
        if m["out"] is not None:
            lines.append("")
            lines.append(f"{m['mode']} vs serial: {compare_meshes(serial_out, m['out'], case_ids)}.")
    table = "\n".join(lines)
    print(table)
    (args.work / "results_batch.md").write_text(table + "\n")
    (args.work / "runs.json").write_text(json.dumps(
        [{k: (str(v) if isinstance(v, Path) else v) for k, v in m.items()} for m in modes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
