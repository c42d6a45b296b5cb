"""``nudf batch``: a cohort from a manifest, resumable, serial or on Dask workers, one bad case never fatal.

The end-to-end tests run the real CLI on two compact phantoms (with their exact GT meshes), a corrupt CT
and a seed outside the volume, read every output back with the engine's own readers, re-run to prove that
done cases are skipped untouched, and redo the cohort on a local Dask cluster of two worker processes to
prove it gives the same meshes as the serial run. The resolution is coarse (1 mm) to keep them fast.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from NUDFCore import batch
from NUDFCore.batch import BatchSettings, CaseOutcome, read_manifest, run_batch
from NUDFCore.cli import main
from NUDFCore.errors import InputError
from NUDFCore.io import mesh_file_frame, polydata_points, polydata_triangles, read_mesh
from NUDFCore.metrics import surface_metrics

RESOLUTION = "1.0"
PHANTOMS = ("p1", "p2")


def _run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _summary(out_dir: Path) -> dict[str, dict]:
    with open(out_dir / "summary.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _seed_text(seed) -> str:
    return ",".join(f"{v:.6f}" for v in seed)


# ------------------------------------------------------------------------------------------ manifest (fast)
def test_manifest_csv_and_jsonl_resolve_paths_and_frames(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.csv").write_text(
        "case_id,ct,seed_lps,seed_ras,gt,ostium_plane_lps,notes\n"
        'a,ct_a.nii.gz,"1,2,3",,refs/a.stl,"0 0 0 0 0 2",first\n'
        'b,/data/b.nrrd,,"[-1, -2, 3]",,,\n'
        'c,c.nii.gz,"1,2",,,,two numbers\n'
        'd,d.nii.gz,"1,2,3","1,2,3",,,both frames\n'
        'e,,"1,2,3",,,,no ct\n'
    )
    cases = {c.case_id: c for c in read_manifest(tmp_path / "sub" / "m.csv")}
    assert list(cases) == ["a", "b", "c", "d", "e"]
    a = cases["a"]
    assert a.error is None and a.ct == str(tmp_path / "sub" / "ct_a.nii.gz")  # relative to the manifest
    assert a.gt == str(tmp_path / "sub" / "refs" / "a.stl")
    assert a.seed_lps == (1.0, 2.0, 3.0) and a.ostium_plane_lps == (0, 0, 0, 0, 0, 2)
    assert cases["b"].seed_lps == (1.0, 2.0, 3.0) and cases["b"].ct == "/data/b.nrrd"  # RAS → LPS
    assert "seed_lps must be 3 finite numbers" in cases["c"].error
    assert "exactly one of seed_lps and seed_ras" in cases["d"].error
    assert "ct column is empty" in cases["e"].error

    (tmp_path / "m.jsonl").write_text(
        json.dumps({"case_id": "x", "ct": "x.nii.gz", "seed_ras": [10, 20, 30]}) + "\n\n"
        + json.dumps({"case_id": "y", "ct": "y.nii.gz", "seed_lps": "4 5 6", "gt": None}) + "\n"
    )
    x, y = read_manifest(tmp_path / "m.jsonl")
    assert x.seed_lps == (-10.0, -20.0, 30.0) and y.seed_lps == (4.0, 5.0, 6.0) and y.gt is None


@pytest.mark.parametrize("text, message", [
    ("case_id,ct\na,a.nii.gz\n", "lacks the column(s) seed_lps or seed_ras"),
    ("ct,seed_lps\na.nii.gz,\"1,2,3\"\n", "lacks the column(s) case_id"),
    ("case_id,ct,seed_lps\n", "holds no cases"),
    ("case_id,ct,seed_lps\na,a.nii,\"1,2,3\"\na,b.nii,\"1,2,3\"\n", "appears more than once"),
    ("case_id,ct,seed_lps\n../evil,a.nii,\"1,2,3\"\n", "cannot name a folder"),
    ("case_id,ct,seed_lps\n.hidden,a.nii,\"1,2,3\"\n", "cannot name a folder"),
    ("case_id,ct,seed_lps\nsummary.csv,a.nii,\"1,2,3\"\n", "cannot name a folder"),
])
def test_manifest_problems_are_refused_before_any_work(tmp_path, text, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(manifest)
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(tmp_path / "out")])
    assert rc == 2 and err.count("\n") == 1 and message.split("(")[0] in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_help_documents_the_manifest_columns(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["batch", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for column in ("case_id", "ct", "seed_lps", "seed_ras", "gt", "ostium_plane_lps", "--workers", "--scheduler",
                   "--redo", "--measure", "summary.csv", "NUDFCore[batch]"):
        assert column in text, column


def test_usage_errors_exit_2_and_write_nothing(tmp_path, monkeypatch):
    manifest = tmp_path / "m.csv"
    manifest.write_text('case_id,ct,seed_lps\na,a.nii.gz,"1,2,3"\n')
    out = tmp_path / "out"
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(out), "--workers", "0"])
    assert rc == 2 and "--workers must be at least 1" in err
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(out), "--threads", "0"])
    assert rc == 2 and "--threads must be at least 1" in err
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(out), "--workers", "2", "--scheduler", "tcp://x:1"])
    assert rc == 2 and "exclude each other" in err
    (tmp_path / "file").write_text("")
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(tmp_path / "file")])
    assert rc == 2 and "not a folder" in err
    # without Dask installed, more than one worker is a clear error naming the extra (serial still works)
    monkeypatch.setitem(sys.modules, "distributed", None)
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(out), "--workers", "2"])
    assert rc == 2 and "NUDFCore[batch]" in err and err.count("\n") == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------ interruption (fast, no network)
def _fake_case(spec, settings) -> CaseOutcome:
    """A worker stand-in: a finished case's files as a real worker returns them (no network needed)."""
    row = {"case_id": spec.case_id, "status": "ok", "ct": spec.ct, "total_s": 0.1}
    return CaseOutcome(spec.case_id, "ok", row, {"laa.vtp": b"mesh of " + spec.case_id.encode(),
                                                  "case.json": json.dumps({"summary": row}).encode()})


@pytest.fixture
def three_cases(tmp_path, model_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('case_id,ct,seed_lps\n' + "".join(f'{c},{c}.nii.gz,"1,2,3"\n' for c in "abc"))
    return manifest, tmp_path / "out", BatchSettings(model=str(model_path))


def test_interrupt_loses_only_the_case_in_flight(three_cases, monkeypatch):
    manifest, out, settings = three_cases

    def interrupted_at_b(spec, s):
        if spec.case_id == "b":
            raise KeyboardInterrupt
        return _fake_case(spec, s)

    monkeypatch.setattr(batch, "run_case", interrupted_at_b)
    with pytest.raises(KeyboardInterrupt):
        run_batch(manifest, out, settings)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".nudf-batch")) == ["a", "summary.csv"]
    assert {k: r["status"] for k, r in _summary(out).items()} == {"a": "ok"}
    monkeypatch.setattr(batch, "run_case", _fake_case)
    report = run_batch(manifest, out, settings)
    assert [r["status"] for r in report.rows] == ["skipped", "ok", "ok"] and report.failed == 0
    assert (out / "b" / "laa.vtp").read_bytes() == b"mesh of b"


def test_interrupt_while_committing_leaves_no_half_written_case(three_cases, monkeypatch):
    manifest, out, settings = three_cases
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "b":  # Ctrl-C after b's files are written, before its folder is renamed
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(batch, "run_case", _fake_case)
    monkeypatch.setattr(batch.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run_batch(manifest, out, settings)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".nudf-batch")) == ["a", "summary.csv"]
    assert list(_summary(out)) == ["a"]


def test_a_second_batch_on_the_same_folder_is_refused(three_cases, monkeypatch):
    manifest, out, settings = three_cases
    inner: list[str] = []

    def nested(spec, s):
        if not inner:
            with pytest.raises(InputError, match="Another nudf batch is writing"):
                run_batch(manifest, out, settings)
            inner.append(spec.case_id)
        return _fake_case(spec, s)

    monkeypatch.setattr(batch, "run_case", nested)
    assert run_batch(manifest, out, settings).ok == 3 and inner == ["a"]


# ------------------------------------------------------------------------------------------ the cohort, end to end
@pytest.fixture(scope="module")
def cohort(tmp_path_factory, phantom_case, second_phantom_case) -> Path:
    """Two phantoms with their GT, a corrupt CT and a seed outside the volume."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "corrupt.nii.gz").write_bytes(b"this is not a CT\n" * 64)
    p1, p2 = phantom_case, second_phantom_case
    plane = _seed_text(list(p1.meta["ostium_center_lps"]) + list(p1.meta["ostium_normal_lps"]))  # the GT ostium
    lines = [
        "case_id,ct,seed_lps,seed_ras,gt,ostium_plane_lps",
        f'p1,{p1.ct_path},"{_seed_text(p1.seed_lps)}",,{p1.mesh_path},"{plane}"',
        f'p2,{p2.ct_path},,"{_seed_text(np.asarray(p2.seed_lps) * [-1, -1, 1])}",{p2.mesh_path},',  # RAS seed
        f'corrupt,corrupt.nii.gz,"{_seed_text(p1.seed_lps)}",,,',
        f'outside,{p1.ct_path},"900,900,900",,,',
    ]
    (root / "cohort.csv").write_text("\n".join(lines) + "\n")
    return root / "cohort.csv"


@pytest.fixture(scope="module")
def serial_run(cohort, model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "out"
    batch._MODELS.clear()  # count the loads of this run only
    argv = ["batch", str(cohort), "--out", str(out), "--model", str(model_path), "--device", "cpu",
            "--resolution", RESOLUTION, "--threads", "1", "--progress-format", "json"]  # as each Dask worker
    import torch

    threads_before = torch.get_num_threads()
    rc, stdout, stderr = _run_cli(argv)
    return {"argv": argv, "out": out, "rc": rc, "stdout": stdout, "stderr": stderr, "summary": _summary(out),
            "threads": (threads_before, torch.get_num_threads()),
            "meshes": {c: read_mesh(out / c / "laa.vtp") for c in PHANTOMS if (out / c / "laa.vtp").exists()}}


def test_serial_batch_writes_two_meshes_and_two_failed_rows(serial_run, phantom_case, model_path):
    out, rows = serial_run["out"], serial_run["summary"]
    assert serial_run["rc"] == 1, serial_run["stderr"]  # some case failed
    assert list(rows) == ["p1", "p2", "corrupt", "outside"]  # manifest order
    assert {c: rows[c]["status"] for c in rows} == {"p1": "ok", "p2": "ok", "corrupt": "failed", "outside": "failed"}
    assert "corrupt.nii.gz" in rows["corrupt"]["error"] and "\n" not in rows["corrupt"]["error"]
    assert "outside the CT volume" in rows["outside"]["error"]
    assert not (out / "corrupt").exists() and not (out / "outside").exists()
    assert not [p for p in out.iterdir() if p.name.startswith((".partial-", ".old-"))]
    for case_id in PHANTOMS:
        mesh, row = serial_run["meshes"][case_id], rows[case_id]
        assert mesh_file_frame(out / case_id / "laa.vtp") == "lps"
        assert mesh.GetNumberOfPoints() == int(row["n_vertices"]) > 0 and mesh.GetNumberOfCells() == int(row["n_faces"])
        assert int(row["boundary_loops"]) >= 1 and row["error"] == ""
        assert float(row["total_s"]) >= float(row["segment_s"]) > 0
        # the GT columns are the surface metrics of the written mesh against the manifest's gt (accuracy itself
        # is the model's business, tested elsewhere)
        gt = read_mesh(row["gt"])
        expected = surface_metrics(mesh, gt, seed=0, case=case_id).to_dict()
        for column in ("gt_msd_mm", "gt_hd95_mm", "gt_precision_3mm", "gt_completeness_2mm"):
            assert float(row[column]) == pytest.approx(expected[column[3:]], rel=1e-5), column
    # provenance: what nudf segment writes beside its mesh
    record = json.loads((out / "p1" / "laa.json").read_text())
    assert record["model_file"] == model_path.name and len(record["model_sha256"]) == 16
    assert np.allclose(record["seed_lps"], phantom_case.seed_lps, atol=1e-5)
    assert record["resolution_mm"] == float(RESOLUTION) and record["input_file"] == str(phantom_case.ct_path)
    details = json.loads((out / "p1" / "case.json").read_text())
    assert details["summary"]["case_id"] == "p1" and details["quality"]["n_faces"] > 0
    # one model load for the whole batch; the in-process run gave this process its torch threads back
    assert sum(float(rows[c]["model_load_s"] or 0) > 0 for c in rows) == 1
    assert serial_run["threads"][0] == serial_run["threads"][1]


def test_json_progress_reports_every_case_and_the_totals(serial_run):
    lines = [json.loads(line) for line in serial_run["stdout"].splitlines()]
    assert [(d["case_id"], d["status"]) for d in lines[:-1]] == [
        ("p1", "ok"), ("p2", "ok"), ("corrupt", "failed"), ("outside", "failed")]
    assert lines[-2]["completed"] == 4 and lines[-2]["failed"] == 2
    assert lines[-1]["done"] is True and lines[-1]["summary"]["ok"] == 2 and lines[-1]["summary"]["failed"] == 2


def test_rerun_skips_done_cases_without_touching_them(serial_run):
    out = serial_run["out"]
    before = {c: _mtimes(out / c) for c in PHANTOMS}
    rc, stdout, _ = _run_cli(serial_run["argv"])
    rows = _summary(out)
    assert rc == 1  # the two bad cases are retried and fail again
    assert {c: rows[c]["status"] for c in rows} == {"p1": "skipped", "p2": "skipped", "corrupt": "failed",
                                                   "outside": "failed"}
    assert {c: _mtimes(out / c) for c in PHANTOMS} == before  # nothing recomputed or rewritten
    for c in PHANTOMS:  # a skipped row keeps the figures of the run that made it
        assert rows[c]["gt_msd_mm"] == serial_run["summary"][c]["gt_msd_mm"] != ""
        assert rows[c]["finished_at"] == serial_run["summary"][c]["finished_at"]
    assert json.loads(stdout.splitlines()[-1])["summary"]["skipped"] == 2


def _has_measure() -> bool:
    try:
        from NUDFCore import measure  # noqa: F401
    except ImportError:
        return False
    return True


def test_dask_workers_redo_the_cohort_with_the_same_meshes(serial_run, cohort, model_path):
    """--redo on a LocalCluster of 2 worker processes: every case recomputed, meshes as in the serial run.

    With the measurement module present the redo also measures (--measure), at the manifest's ostium plane for p1.
    """
    pytest.importorskip("distributed")
    out = serial_run["out"]
    before = {c: _mtimes(out / c) for c in PHANTOMS}
    measure = ["--measure"] if _has_measure() else []
    rc, _, stderr = _run_cli(["batch", str(cohort), "--out", str(out), "--model", str(model_path), "--device", "cpu",
                              "--resolution", RESOLUTION, "--workers", "2", "--threads", "1", "--redo",
                              "--progress-format", "none"]
                             + measure)
    rows = _summary(out)
    assert rc == 1, stderr
    assert {c: rows[c]["status"] for c in rows} == {"p1": "ok", "p2": "ok", "corrupt": "failed", "outside": "failed"}
    assert rows["corrupt"]["error"] == serial_run["summary"]["corrupt"]["error"]
    assert all(rows[c]["worker"].split(":")[-1] != str(os.getpid()) for c in rows)  # ran in worker processes
    for c in PHANTOMS:
        assert _mtimes(out / c)["laa.vtp"] != before[c]["laa.vtp"]  # recomputed and replaced
        serial, dask = serial_run["meshes"][c], read_mesh(out / c / "laa.vtp")
        assert np.array_equal(polydata_triangles(serial), polydata_triangles(dask))
        assert np.abs(polydata_points(serial) - polydata_points(dask)).max() <= 1e-4  # mm
        if measure:  # measured, or the reason it could not be is in the row (the segmentation is kept)
            doc_path = out / c / "measurements.json"
            if rows[c]["measure_error"]:
                assert not doc_path.exists()
            else:
                doc = json.loads(doc_path.read_text())
                assert float(rows[c]["depth_mm"]) == pytest.approx(doc["depth_mm"], rel=1e-5)
                assert float(rows[c]["ostium_max_diameter_mm"]) == pytest.approx(doc["ostium"]["max_diameter_mm"],
                                                                                 rel=1e-5)
                assert doc["ostium_source"] == ("plane" if c == "p1" else "boundary")
    assert not [p for p in out.iterdir() if p.name.startswith((".partial-", ".old-"))]


def test_measure_without_the_measurement_module_is_a_clear_error(tmp_path, monkeypatch):
    import NUDFCore

    manifest = tmp_path / "m.csv"
    manifest.write_text('case_id,ct,seed_lps\na,a.nii.gz,"1,2,3"\n')
    monkeypatch.setitem(sys.modules, "NUDFCore.measure", None)
    monkeypatch.delattr(NUDFCore, "measure", raising=False)
    rc, _, err = _run_cli(["batch", str(manifest), "--out", str(tmp_path / "out"), "--measure"])
    assert rc == 2 and "--measure needs the measurement module" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_dask_cluster_via_scheduler_address(cohort, model_path, tmp_path):
    """--scheduler sends the cases to a cluster someone else started (here: a one-worker LocalCluster)."""
    distributed = pytest.importorskip("distributed")
    manifest = tmp_path / "bad_only.csv"
    manifest.write_text("\n".join(cohort.read_text().splitlines()[:1] + cohort.read_text().splitlines()[3:]) + "\n")
    (tmp_path / "corrupt.nii.gz").write_bytes((cohort.parent / "corrupt.nii.gz").read_bytes())
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        rc, _, err = _run_cli(["batch", str(manifest), "--out", str(tmp_path / "out"), "--model", str(model_path),
                               "--device", "cpu", "--scheduler", cluster.scheduler_address, "--progress-format", "none"])
    rows = _summary(tmp_path / "out")
    assert rc == 1, err
    assert {c: r["status"] for c, r in rows.items()} == {"corrupt": "failed", "outside": "failed"}
    assert "outside the CT volume" in rows["outside"]["error"] and rows["outside"]["worker"] != ""


def test_local_gpu_workers_pin_one_device_each(monkeypatch):
    """Worker i of a local cluster runs on GPU i mod n (CUDA faked: the mapping, not the hardware, is tested)."""
    import torch
    from types import SimpleNamespace

    monkeypatch.setattr(batch, "_CONFIGURED", True)  # leave this process's torch threads alone
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    devices = []
    for name in (0, 1, 2, 3):
        monkeypatch.setattr(batch, "_dask_worker", lambda name=name: SimpleNamespace(name=name))
        devices.append(batch._configure_worker(BatchSettings(device="auto")))
    assert devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert batch._configure_worker(BatchSettings(device="cpu")) == "cpu"
    monkeypatch.setattr(batch, "_dask_worker", lambda: None)  # in-process: torch's own choice of device
    assert batch._configure_worker(BatchSettings(device="auto")) == "auto"
