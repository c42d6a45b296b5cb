"""Cohort runs: segment every case of a manifest, resumably, serially or on a Dask cluster.

A shell loop around ``nudf segment`` pays a Python start, a model load and a torch warm-up per case and keeps
no record of what failed. :func:`run_batch` loads the model once per worker, records every case in
``DIR/summary.csv`` (rewritten atomically after each case) and skips the cases already done when re-run.

Layout of ``DIR`` (one folder per case, present only once the case is complete)::

    DIR/<case_id>/laa.vtp            the open LAA surface, LPS mm (tagged SPACE=LPS)
    DIR/<case_id>/laa.json           provenance of the segmentation, as ``nudf segment`` writes it
    DIR/<case_id>/measurements.json  with --measure
    DIR/<case_id>/case.json          this case's summary row, quality and timings; written last
    DIR/summary.csv                  one row per case: ok / failed / skipped, error, timings, quality, GT metrics

Who writes what: workers (processes, possibly on other machines) only *read* — the CT, the GT mesh, the
model — and send back the case's files as bytes; this process alone writes ``DIR``. A case's files go into
a hidden ``DIR/.partial-<case_id>-*`` folder that is renamed to ``DIR/<case_id>`` when complete, so an
interrupted batch (Ctrl-C, a killed worker, a power cut) loses at most the cases in flight and never leaves
a half-written case that a re-run would take for done. A lock file keeps two batches from sharing a ``DIR``.

Workers: ``workers=1`` runs in this process (no Dask needed); ``workers=N`` starts a Dask ``LocalCluster`` of
N processes with ``cores // N`` threads each, running one case at a time per worker with that many torch
threads; ``scheduler="tcp://host:8786"`` sends the same tasks to an existing Dask cluster (for example one
started by dask-jobqueue on SLURM/PBS), whose workers must see the manifest's paths. With CUDA present,
worker *i* of a local cluster pins GPU ``i mod n_gpus``.
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import InputError, NUDFError

#: Manifest columns (CSV header or JSON-lines keys); other columns are allowed and ignored.
MANIFEST_HELP = (
    "case_id (required; letters, digits, '.', '_', '-': it names the case folder), "
    "ct (required; CT file or DICOM series folder; relative paths are relative to the manifest's folder), "
    "seed_lps or seed_ras (exactly one per row; three numbers in mm, e.g. \"-12.5,30,88\" or [x, y, z] in JSON), "
    "gt (optional; an open reference LAA mesh: adds MSD/HD95/precision/completeness to the summary), "
    "ostium_plane_lps (optional; x,y,z,nx,ny,nz: the ostium plane that --measure measures at)"
)

CASE_FILE = "case.json"
MESH_FILE = "laa.vtp"
PROVENANCE_FILE = "laa.json"
MEASUREMENTS_FILE = "measurements.json"
SUMMARY_FILE = "summary.csv"
_LOCK_FILE = ".nudf-batch.lock"
_PARTIAL_PREFIX = ".partial-"
_OLD_PREFIX = ".old-"
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

#: summary.csv columns before the GT metrics and measurements (stable order).
BASE_COLUMNS = [
    "case_id", "status", "error", "ct", "seed_lps", "gt",
    "total_s", "read_s", "model_load_s", "segment_s", "gt_metrics_s", "measure_s",
    "n_vertices", "n_faces", "boundary_loops", "area_mm2", "mean_predicted_distance_mm", "quality_warnings",
    "measure_error",
]
#: summary.csv's last columns: where and when a case ran.
TAIL_COLUMNS = ["worker", "finished_at"]


def gt_metric_columns() -> list[str]:
    """Summary columns for the GT comparison: ``gt_`` + MSD, HD95 and every precision/completeness field."""
    from .metrics import metric_columns

    wanted = re.compile(r"^(msd_mm|hd95_mm|(precision|completeness)_\d+(\.\d+)?mm)$")
    return ["gt_" + name for name in metric_columns() if wanted.match(name)]


# ------------------------------------------------------------------------------------------ manifest
@dataclass(frozen=True)
class CaseSpec:
    """One manifest row, resolved: absolute paths and the seed in LPS.

    A row whose values cannot be used (a seed that is not three numbers, no seed) keeps its ``error``: it is
    recorded as failed without being sent to a worker, and never stops the other rows.
    """

    case_id: str
    ct: str = ""
    seed_lps: tuple[float, float, float] | None = None
    gt: str | None = None
    ostium_plane_lps: tuple[float, ...] | None = None
    error: str | None = None


def _numbers(value, count: int, name: str) -> tuple[float, ...]:
    """``"x,y,z"``, ``"x y z"``, ``"[x, y, z]"`` or a JSON list → ``count`` finite floats."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v for v in re.split(r"[,;\s]+", str(value).strip().strip("[]()")) if v]
    try:
        vals = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != count or not all(v == v and abs(v) != float("inf") for v in vals):
        raise InputError(f"{name} must be {count} finite numbers; got {value!r}")
    return vals


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _resolve_path(value, base: Path) -> str:
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _case_from_row(row: dict, base: Path) -> CaseSpec:
    from .frames import to_lps

    case_id = str(row.get("case_id") or "").strip()
    spec = CaseSpec(case_id=case_id)
    try:
        if _blank(row.get("ct")):
            raise InputError("the ct column is empty")
        spec = replace(spec, ct=_resolve_path(row["ct"], base))
        has_lps, has_ras = not _blank(row.get("seed_lps")), not _blank(row.get("seed_ras"))
        if has_lps == has_ras:
            raise InputError("give exactly one of seed_lps and seed_ras (the frame must be explicit)")
        if has_lps:
            seed = _numbers(row["seed_lps"], 3, "seed_lps")
        else:
            seed = tuple(float(v) for v in to_lps(_numbers(row["seed_ras"], 3, "seed_ras"), "ras"))
        spec = replace(spec, seed_lps=seed)
        if not _blank(row.get("gt")):
            spec = replace(spec, gt=_resolve_path(row["gt"], base))
        if not _blank(row.get("ostium_plane_lps")):
            plane = _numbers(row["ostium_plane_lps"], 6, "ostium_plane_lps")
            if sum(v * v for v in plane[3:]) < 1e-12:
                raise InputError("ostium_plane_lps has a zero normal")
            spec = replace(spec, ostium_plane_lps=plane)
    except InputError as exc:
        return replace(spec, error=f"manifest row: {exc}")
    return spec


def read_manifest(path: str | os.PathLike) -> list[CaseSpec]:
    """Read a CSV (``.csv``/``.tsv``) or JSON-lines (``.jsonl``/``.ndjson``) manifest; see :data:`MANIFEST_HELP`.

    Raises :class:`InputError` for a problem of the whole manifest (unreadable, no rows, a missing column, a
    missing, unsafe or repeated ``case_id``); a problem of one row's values is kept in that row's ``error``.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"The manifest {p} does not exist or is not a file.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the manifest {p}: {exc}") from exc
    rows: list[dict] = []
    if p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}, line {n}: not a JSON object ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise InputError(f"{p}, line {n}: each line must be one JSON object.")
            rows.append(row)
        columns = set().union(*(r.keys() for r in rows)) if rows else set()
    else:
        dialect = "excel-tab" if p.suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(_stdio.StringIO(text), dialect=dialect)
        rows = [r for r in reader if any(not _blank(v) for v in r.values())]
        columns = set(reader.fieldnames or [])
    if not rows:
        raise InputError(f"The manifest {p} holds no cases.")
    missing = [c for c in ("case_id", "ct") if c not in columns]
    if not ({"seed_lps", "seed_ras"} & columns):
        missing.append("seed_lps or seed_ras")
    if missing:
        raise InputError(f"The manifest {p} lacks the column(s) {', '.join(missing)} (columns: {MANIFEST_HELP}).")
    cases: list[CaseSpec] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        case_id = str(row.get("case_id") or "").strip()
        if not _CASE_ID.match(case_id) or case_id.lower() == SUMMARY_FILE:
            raise InputError(
                f"{p}, case {n}: case_id {case_id!r} cannot name a folder (use letters, digits, '.', '_', '-', "
                "starting with a letter or digit, at most 128 characters)."
            )
        if case_id in seen:
            raise InputError(f"{p}: case_id {case_id!r} appears more than once.")
        seen.add(case_id)
        cases.append(_case_from_row(row, p.resolve().parent))
    return cases


# ------------------------------------------------------------------------------------------ one case (worker side)
@dataclass(frozen=True)
class BatchSettings:
    """What every case shares; sent to the workers with each case (must stay small and picklable)."""

    model: str | None = None
    """Checkpoint path, absolute and visible to the workers (None: each worker's ``$NUDF_MODEL`` or bundled model)."""
    device: str = "auto"
    resolution_mm: float = 0.25
    smoothing: float = 0.0
    decimate: float = 0.0
    measure: bool = False
    gt_samples: int = 50_000
    torch_threads: int | None = None
    """torch threads per worker; None: torch's choice in-process, cores // N on a local cluster of N workers,
    cores // task slots on an existing cluster."""


@dataclass
class CaseOutcome:
    """What a worker sends back: the summary row and the case's files (name → bytes; empty when failed)."""

    case_id: str
    status: str
    row: dict = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


_MODELS: dict[tuple[str, str], object] = {}
_MODELS_LOCK = threading.Lock()
_CONFIGURED = False


def _one_line(exc: BaseException) -> str:
    """The first line of an error, cut to a readable length (the summary holds one line per case)."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    if not isinstance(exc, NUDFError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _dask_worker():
    """The Dask worker running this task, or None in-process (where Dask need not even be imported)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_worker()
    except ValueError:
        return None


def _configure_worker(settings: BatchSettings) -> str:
    """Once per process: torch threads; on a local multi-GPU cluster, worker i pins GPU i mod n. Returns the device."""
    global _CONFIGURED
    import torch

    worker = _dask_worker()
    with _MODELS_LOCK:
        if not _CONFIGURED and worker is not None:  # in-process, _serial sets (and restores) the threads
            threads = settings.torch_threads
            if threads is None:  # an external cluster: share the cores among task slots
                threads = max(1, (os.cpu_count() or 1) // max(1, int(worker.state.nthreads)))
            if threads:
                torch.set_num_threads(int(threads))
            _CONFIGURED = True
    if worker is not None and settings.device in ("auto", "cuda") and torch.cuda.is_available():
        index = worker.name if isinstance(worker.name, int) else 0
        return f"cuda:{index % torch.cuda.device_count()}"
    return settings.device


def _cached_model(path: str | None, device: str) -> tuple[object, float]:
    """The network for (path, device), loaded once per process; returns it and the load time (0 when cached).

    ``path`` None is the worker's own default model (its install's bundled one, or its ``$NUDF_MODEL``).
    """
    from .infer import load_model
    from .model import resolve_device

    key = (path, device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key], 0.0
        t0 = time.perf_counter()
        net = load_model(path, resolve_device(device))
        _MODELS[key] = net
        return net, time.perf_counter() - t0


def _mesh_bytes(mesh_lps) -> bytes:
    """The mesh as the bytes of a tagged LPS VTP file (workers never write into the output folder)."""
    from .io import write_mesh

    with tempfile.TemporaryDirectory(prefix="nudf-batch-") as tmp:
        return write_mesh(mesh_lps, Path(tmp) / MESH_FILE).read_bytes()


def _measure(mesh_lps, plane: tuple[float, ...] | None) -> tuple[dict, dict, list[str]]:
    """Occlusion-planning measurements (:mod:`NUDFCore.measure`): the JSON document, its flat row, its warnings."""
    from . import measure

    m = measure.measure_laa(mesh_lps, ostium_plane_lps=None if plane is None else (plane[:3], plane[3:]))
    return m.to_dict(), m.flat_row(), [str(w) for w in m.warnings]


def _json_bytes(data: dict) -> bytes:
    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "to_dict"):
            return o.to_dict()
        return str(o)

    return (json.dumps(_finite(data), indent=2, default=default) + "\n").encode()


def _finite(obj):
    """JSON has no NaN or infinity: write them as null (numpy scalars become Python numbers)."""
    if hasattr(obj, "item") and not hasattr(obj, "__len__"):  # a numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run_case(spec: CaseSpec, settings: BatchSettings) -> CaseOutcome:
    """Segment one case (worker side): read, segment, compare with the GT, measure; never raises for a bad case.

    Any error of the case becomes a ``failed`` outcome with its one-line message; only an interrupt
    (Ctrl-C) propagates. Nothing is written to the output folder here.
    """
    t_start = time.perf_counter()
    row: dict = {"case_id": spec.case_id, "ct": spec.ct, "gt": spec.gt or "",
                 "seed_lps": " ".join(f"{v:.3f}" for v in spec.seed_lps) if spec.seed_lps else "",
                 "worker": f"{socket.gethostname()}:{os.getpid()}"}
    files: dict[str, bytes] = {}
    details: dict = {}
    try:
        if spec.error:
            raise InputError(spec.error)
        from .infer import SegmentOptions, segment
        from .io import read_mesh, read_volume
        from .provenance import segmentation_provenance

        device = _configure_worker(settings)
        net, row["model_load_s"] = _cached_model(settings.model, device)
        t0 = time.perf_counter()
        ct = read_volume(spec.ct)
        row["read_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        options = SegmentOptions(resolution_mm=settings.resolution_mm, device=device,
                                 smoothing=settings.smoothing, decimate=settings.decimate)
        result = segment(ct, seed_lps=spec.seed_lps, model=net, options=options)
        row["segment_s"] = time.perf_counter() - t0
        q = result.quality
        row.update({k: q.get(k, "") for k in ("n_vertices", "n_faces", "boundary_loops", "area_mm2",
                                              "mean_predicted_distance_mm")})
        row["quality_warnings"] = "; ".join(str(w) for w in q.get("warnings", []) or [])
        files[MESH_FILE] = _mesh_bytes(result.mesh_lps)
        files[PROVENANCE_FILE] = _json_bytes(segmentation_provenance(
            seed_lps=result.seed_lps, options=options, model=settings.model, input_file=spec.ct))
        details = {"quality": q, "timings_s": result.timings, "peak_memory_mb": result.peak_memory_mb}
        if spec.gt:
            from .metrics import surface_metrics

            t0 = time.perf_counter()
            m = surface_metrics(result.mesh_lps, read_mesh(spec.gt), n_samples=settings.gt_samples, seed=0,
                                case=spec.case_id).to_dict()
            row.update({col: m[col[3:]] for col in gt_metric_columns()})
            row["gt_metrics_s"] = time.perf_counter() - t0
        if settings.measure:  # a measurement problem is reported; it does not discard the segmentation
            t0 = time.perf_counter()
            try:
                doc, flat, warnings = _measure(result.mesh_lps, spec.ostium_plane_lps)
            except NUDFError as exc:
                row["measure_error"] = _one_line(exc)
            else:
                files[MEASUREMENTS_FILE] = _json_bytes(doc)
                row.update(flat)
                row["quality_warnings"] = "; ".join(filter(None, [row["quality_warnings"]]
                                                           + [f"measure: {w}" for w in warnings]))
            row["measure_s"] = time.perf_counter() - t0
        status = "ok"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad case is recorded, never fatal for the batch
        status, files = "failed", {}
        row["error"] = _one_line(exc)
    row["status"] = status
    row["total_s"] = time.perf_counter() - t_start
    row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    row = _finite(row)
    if status == "ok":  # the done marker: this case's row and the full quality record, written last
        files[CASE_FILE] = _json_bytes({"summary": row, **details})
    return CaseOutcome(spec.case_id, status, row, files)


# ------------------------------------------------------------------------------------------ output folder (client side)
@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` so two batches never write the same folder (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; documented
        yield
        return
    fd = os.open(out_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise InputError(f"Another nudf batch is writing to {out_dir}; wait for it or choose another --out.") from exc
        yield
    finally:
        os.close(fd)


def _prepare_out_dir(out_dir: Path) -> Path:
    """Check the output folder before any work (one clear error otherwise), then create it."""
    from .io import check_output_dir

    out = check_output_dir(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the output folder {out}: {exc.strerror or exc}.") from exc
    return out


def _remove_leftovers(out_dir: Path) -> None:
    """Delete the partial/old folders an interrupted batch left behind (we hold the lock: none is in use)."""
    for child in out_dir.iterdir():
        if child.is_dir() and child.name.startswith((_PARTIAL_PREFIX, _OLD_PREFIX)):
            shutil.rmtree(child, ignore_errors=True)


def done_row(out_dir: Path, case_id: str) -> dict | None:
    """The recorded row of a completed case, or None when the case is not done."""
    marker = Path(out_dir) / case_id / CASE_FILE
    try:
        row = json.loads(marker.read_text())["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return row if isinstance(row, dict) and row.get("case_id") == case_id else None


def _commit(out_dir: Path, outcome: CaseOutcome) -> None:
    """Write a finished case's files into a hidden folder, then rename it into place (replacing a previous result)."""
    partial = out_dir / f"{_PARTIAL_PREFIX}{outcome.case_id}-{uuid.uuid4().hex[:8]}"
    final = out_dir / outcome.case_id
    try:
        partial.mkdir()
        for name in sorted(outcome.files, key=lambda n: n == CASE_FILE):  # the marker last
            (partial / name).write_bytes(outcome.files[name])
        if final.exists():
            old = out_dir / f"{_OLD_PREFIX}{outcome.case_id}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def summary_columns(rows: Sequence[dict]) -> list[str]:
    """Base columns, GT metrics, any other column a row has (measurements), then worker and time; stable order."""
    cols = BASE_COLUMNS + gt_metric_columns()
    known = set(cols) | set(TAIL_COLUMNS)
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in known))  # first-seen order
    return cols + extra + TAIL_COLUMNS


def _cell(value) -> str:
    """A CSV cell: floats to 6 significant digits (the full values stay in each case's case.json)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _write_summary(out_dir: Path, rows: list[dict]) -> Path:
    """Rewrite ``summary.csv`` atomically (readers never see a half-written table)."""
    from .io import atomic_output

    path = out_dir / SUMMARY_FILE
    with atomic_output(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=summary_columns(rows), extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(v) for k, v in r.items()})
    return path


# ------------------------------------------------------------------------------------------ executors
@contextmanager
def _serial(todo: list[CaseSpec], settings: BatchSettings) -> Iterator[Iterator[CaseOutcome]]:
    """The cases one after the other in this process (with ``settings.torch_threads``, restored afterwards)."""
    import torch

    previous = torch.get_num_threads()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        yield (run_case(spec, settings) for spec in todo)
    finally:
        torch.set_num_threads(previous)


def _import_dask():
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise InputError(
            "--workers > 1 and --scheduler run on Dask, which is not installed: pip install 'NUDFCore[batch]' "
            "(dask[distributed]), or use --workers 1."
        ) from exc
    return Client, LocalCluster, as_completed


@contextmanager
def _dask(todo: list[CaseSpec], settings: BatchSettings, workers: int,
          scheduler: str | None) -> Iterator[Iterator[CaseOutcome]]:
    """Run the cases on a Dask cluster: a new LocalCluster of ``workers`` processes, or the one at ``scheduler``."""
    Client, LocalCluster, as_completed = _import_dask()
    cluster = None
    resources = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"Cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from exc
        else:
            threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // workers)
            # one case at a time per worker (resource slot), with `threads` torch threads: workers x threads <= cores
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                   dashboard_address=None, resources={"nudf_case": 1},
                                   silence_logs=logging.ERROR)  # failures reach summary.csv, not the log
            client = Client(cluster)
            resources = {"nudf_case": 1}
            settings = replace(settings, torch_threads=threads)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    batch_token = uuid.uuid4().hex[:8]
    pending = {}
    for spec in todo:
        fut = client.submit(run_case, spec, settings, key=f"nudf-{spec.case_id}-{batch_token}", pure=False,
                            resources=resources)
        pending[fut.key] = (fut, spec)

    def outcomes() -> Iterator[CaseOutcome]:
        for fut in as_completed([f for f, _ in pending.values()]):
            _, spec = pending.pop(fut.key)
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died or the task could not run: one failed case
                outcome = CaseOutcome(spec.case_id, "failed", {
                    "case_id": spec.case_id, "ct": spec.ct, "status": "failed",
                    "error": f"worker lost: {_one_line(exc)}",
                    "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            fut.release()  # the mesh bytes leave the cluster's memory once we hold them
            yield outcome

    try:
        yield outcomes()
    finally:
        client.cancel([f for f, _ in pending.values()])
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------ the batch
@dataclass
class BatchReport:
    """What :func:`run_batch` did; ``failed`` > 0 means the exit status should say so."""

    summary_csv: Path
    rows: list[dict]
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [(r["case_id"], r.get("error", "")) for r in self.rows if r.get("status") == "failed"]


#: ``on_case(row, report)`` after each case (done, failed or skipped) — progress bars, JSON lines.
CaseCallback = Callable[[dict, "BatchReport"], None]


def run_batch(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: BatchSettings | None = None,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    redo: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_case: CaseCallback | None = None,
) -> BatchReport:
    """Segment every case of ``manifest`` into ``out_dir`` (see the module docstring for the layout).

    Done cases are skipped unless ``redo``; ``workers`` > 1 or a ``scheduler`` address use Dask (the
    ``batch`` extra). Raises :class:`InputError` before any work for a bad manifest, output folder, model or
    worker setting; a bad *case* is only a ``failed`` row. ``on_start(n_cases)`` and ``on_case`` report progress.
    """
    from .infer import default_model_path

    settings = settings or BatchSettings()
    if workers < 1:
        raise InputError(f"--workers must be at least 1; got {workers}.")
    if settings.torch_threads is not None and settings.torch_threads < 1:
        raise InputError(f"--threads must be at least 1; got {settings.torch_threads}.")
    if scheduler is not None or workers > 1:
        _import_dask()  # fail now, naming the extra, not after the serial part
    cases = read_manifest(manifest)
    if settings.model:  # an absolute path for the workers; without one each worker loads its default model
        model = Path(settings.model).expanduser()
        if not model.is_file():
            raise InputError(f"The model {model} is not a file.")
        settings = replace(settings, model=str(model.resolve()))
    elif scheduler is None:
        default_model_path()  # none bundled, or $NUDF_MODEL wrong: say so before any work
    from .infer import SegmentOptions
    from .model import resolve_device

    SegmentOptions(resolution_mm=settings.resolution_mm, smoothing=settings.smoothing,
                   decimate=settings.decimate).check()
    if scheduler is None:
        resolve_device(settings.device)  # e.g. CUDA asked for on a machine without it: one error, not N rows
    if settings.measure:
        try:
            from . import measure  # noqa: F401
        except ImportError as exc:
            raise InputError("--measure needs the measurement module NUDFCore.measure, which this install "
                             "lacks.") from exc
    out = _prepare_out_dir(Path(out_dir))
    t_start = time.perf_counter()
    with _locked(out):
        _remove_leftovers(out)
        rows: dict[str, dict] = {}
        report = BatchReport(summary_csv=out / SUMMARY_FILE, rows=[])

        def record(row: dict) -> None:
            rows[row["case_id"]] = row
            setattr(report, row["status"], getattr(report, row["status"]) + 1)
            report.rows = [rows[c.case_id] for c in cases if c.case_id in rows]
            report.seconds = time.perf_counter() - t_start
            _write_summary(out, report.rows)
            if on_case is not None:
                on_case(row, report)

        if on_start is not None:
            on_start(len(cases))
        todo = []
        for spec in cases:
            previous = None if redo else done_row(out, spec.case_id)
            if previous is not None:
                record({**previous, "status": "skipped"})
            else:
                todo.append(spec)
        if not rows:
            _write_summary(out, [])
        if todo:
            runner = _dask(todo, settings, workers, scheduler) if (scheduler or workers > 1) else _serial(todo, settings)
            with runner as outcomes:
                for outcome in outcomes:
                    if outcome.status == "ok":
                        _commit(out, outcome)
                    record(outcome.row)
    report.seconds = time.perf_counter() - t_start
    return report
