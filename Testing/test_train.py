"""Training: loss, batch composition, crop augmentation, overfitting one phantom, CLI, resume, DDP (gloo)."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from NUDFCore.cli import main as cli_main
from NUDFCore.crop import CropGeometry, subvolume_around
from NUDFCore.errors import CheckpointError, InputError, OutputExistsError
from NUDFCore.io import Volume
from NUDFCore.model import ModelConfig, NUDFNet, load_checkpoint, read_checkpoint
from NUDFCore.train import (
    PreparedCase,
    TrainConfig,
    draw_points,
    evaluate,
    kind_shares,
    last_checkpoint_path,
    prepare_case,
    train,
    training_crop,
    truncated_l1,
    validation_crops,
)

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ helpers
def _cap_distance(p, c, radius, zcut):
    """Exact distance to a spherical cap (sphere of ``radius`` at ``c`` cut open above z = c_z + zcut)."""
    v = p - c
    r = np.linalg.norm(v, axis=1)
    on_cap = v[:, 2] <= zcut * r / radius
    rho = np.linalg.norm(v[:, :2], axis=1)
    d_rim = np.hypot(rho - np.sqrt(radius**2 - zcut**2), v[:, 2] - zcut)
    return np.where(on_cap, np.abs(r - radius), d_rim)


def _analytic_case(seed=0, n=20_000) -> PreparedCase:
    """A bright sphere (the 'appendage', open at the top into a bright 'atrium') with exact cap distances."""
    rng = np.random.default_rng(seed)
    c, radius, zcut = np.array([5.0, -3.0, 40.0]), 10.0, 6.0
    shape, sp = (50, 60, 60), np.array([0.9, 0.9, 1.1])
    vol = Volume(np.zeros(shape, np.float32), sp, c - sp * np.array([30, 30, 25]))
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    pts = vol.index_to_lps(np.stack([i, j, k], -1))
    bright = (np.linalg.norm(pts - c, axis=-1) < radius) | (
        (pts[..., 2] - c[2] > zcut) & (np.linalg.norm(pts[..., :2] - c[:2], axis=-1) < 14))
    vol.array[:] = np.where(bright, 350.0, -100.0)
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    side = rng.integers(0, 2, n)
    rad = radius + np.where(side == 0, -1, 1) * np.abs(rng.normal(0, 1.5, n))
    p = c + dirs * rad[:, None]
    kind = side.astype(np.int8)
    p[: n // 5] = c + rng.uniform(-30, 30, (n // 5, 3))
    kind[: n // 5] = 2
    lumen = c + rng.uniform(-4, 4, (100, 3))
    return PreparedCase("analytic", subvolume_around(vol, lumen, 50.0), p, _cap_distance(p, c, radius, zcut),
                        kind, lumen)


# ------------------------------------------------------------------------------------------ units
def test_truncated_l1_values_and_no_dead_gradient():
    pred = torch.tensor([[0.5, 6.0, 2.0, 7.0]], requires_grad=True)
    true = torch.tensor([[1.0, 3.0, 9.0, 8.0]])
    loss = truncated_l1(pred, true, truncation_mm=5.0)
    # |0.5-1| + |min(6,5)... prediction above T for a point whose truth is 3 -> |6-3| (pushed down),
    # truth 9 ≥ T with pred 2 -> 5-2, truth 8 ≥ T with pred 7 -> 0
    assert float(loss.detach()) == pytest.approx((0.5 + 3.0 + 3.0 + 0.0) / 4)
    loss.backward()
    np.testing.assert_allclose(pred.grad.numpy(), [[-0.25, 0.25, -0.25, 0.0]])


def test_kind_shares_default_mix():
    s = kind_shares(TrainConfig(data=".", out="m.pt"))
    assert sum(s.values()) == pytest.approx(1.0)
    assert s[0] == pytest.approx(0.8 * 0.45) and s[2] == pytest.approx(0.08) and s[3] + s[4] == pytest.approx(0.2)


def test_draw_points_respects_mix_crop_and_missing_kinds():
    case = _analytic_case()
    case.kind[:300] = 3  # a few 'hard negatives' (no kind 4 at all: its share goes to the others)
    geom = CropGeometry(case.lumen_points_lps[0], 40.0, 32)
    rng = np.random.default_rng(0)
    shares = kind_shares(TrainConfig(data=".", out="m.pt"))
    q, d = draw_points(case, geom, 10_000, shares, rng)
    assert q.shape == (10_000, 3) and d.shape == (10_000,) and np.abs(q).max() <= 1.0
    # the distances are the samples' own: map back and look them up
    p = geom.normalized_to_lps(q)
    assert np.all(np.isin(d, case.distance_mm))
    kinds = np.array([case.kind[np.flatnonzero(np.all(np.isclose(case.points_lps, x, atol=1e-3), axis=1))[0]]
                      for x in p[:400]])
    assert 0.05 < np.mean(kinds == 3) < 0.20  # ~10 % / 0.9 renormalised = 11 %
    assert np.mean(kinds == 2) > 0.03 and np.mean(kinds == 0) > 0.3


def test_training_crop_augmentation_keeps_points_and_image_aligned():
    case = _analytic_case()
    cfg = TrainConfig(data=".", out="m.pt", rotation_deg=10.0, center_jitter_mm=2.0, noise_sigma=0.0,
                      intensity_scale=0.0, intensity_offset=0.0)
    mc = ModelConfig.preset("tiny", crop_size_mm=40.0)
    crop, geom = training_crop(case, mc, cfg, np.random.default_rng(3))
    assert not np.allclose(geom.rotation_lps, np.eye(3))  # really rotated
    # sample the crop where the truth says 'inside the sphere, > 3 mm from the wall' vs. 'outside, > 3 mm'
    q, d = draw_points(case, geom, 4000, {0: 0.5, 1: 0.5}, np.random.default_rng(1))
    vals = torch.nn.functional.grid_sample(torch.from_numpy(crop)[None, None],
                                           torch.from_numpy(q).view(1, 1, 1, -1, 3), align_corners=True).view(-1)
    kinds = np.array([case.kind[np.argmin(np.linalg.norm(case.points_lps - x, axis=1))]
                      for x in geom.normalized_to_lps(q[:600])])
    far = (d[:600] > 2.5) & (geom.normalized_to_lps(q[:600])[:, 2] < 38.0)  # lower half: away from the 'atrium'
    inside, outside = vals[:600].numpy()[far & (kinds == 0)], vals[:600].numpy()[far & (kinds == 1)]
    assert inside.mean() > 0.3 and outside.mean() < 0.0  # 350 HU -> 0.35, -100 HU -> -0.1


def test_config_validation_and_output_guards(tmp_path):
    with pytest.raises(InputError):
        TrainConfig(data=".", out="m.pt", epochs=0)
    with pytest.raises(InputError):
        TrainConfig(data=".", out="m.pt", mix=(0.5, 0.5))
    with pytest.raises(InputError):
        TrainConfig(data=".", out="m.pt", val_fraction=1.0)
    assert last_checkpoint_path(Path("a/model.pt")) == Path("a/model.last.pt")
    case = _analytic_case()
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        train(TrainConfig(data=tmp_path, out=tmp_path / "m.pt", preset="tiny"), progress=False,
              cases=([case], [case]))
    with pytest.raises(CheckpointError, match="Cannot resume"):
        train(TrainConfig(data=tmp_path, out=tmp_path / "n.pt", preset="tiny", resume=True), progress=False,
              cases=([case], [case]))
    with pytest.raises(InputError, match="does not exist"):
        train(TrainConfig(data=tmp_path, out=tmp_path / "no" / "m.pt", preset="tiny"), progress=False,
              cases=([case], [case]))


def test_train_resume_continues_exactly_where_it_stopped(tmp_path):
    case = _analytic_case()
    kw = dict(data=tmp_path, preset="tiny", steps_per_epoch=4, points=500, val_points=2000, lr=2e-3)
    full = train(TrainConfig(out=tmp_path / "full.pt", epochs=2, **kw), progress=False, cases=([case], [case]))
    first = train(TrainConfig(out=tmp_path / "half.pt", epochs=2, stop_after_epochs=1, **kw), progress=False, cases=([case], [case]))
    assert len(first["history"]) == 1
    second = train(TrainConfig(out=tmp_path / "half.pt", epochs=2, resume=True, **kw), progress=False,
                   cases=([case], [case]))
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    # same data stream, same schedule, same weights: the resumed run equals the uninterrupted one
    assert second["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], rel=1e-4)
    a = read_checkpoint(last_checkpoint_path(tmp_path / "full.pt"))["state_dict"]
    b = read_checkpoint(last_checkpoint_path(tmp_path / "half.pt"))["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="already trained 2"):
        train(TrainConfig(out=tmp_path / "half.pt", epochs=2, resume=True, **kw), progress=False,
              cases=([case], [case]))


def test_resume_on_other_validation_cases_chooses_the_best_model_afresh(tmp_path):
    # Fine-tuning on more cases resumes a checkpoint whose best loss was measured on other validation cases:
    # that number must not stop the new run from ever saving a best model.
    case = _analytic_case()
    kw = dict(data=tmp_path, preset="tiny", steps_per_epoch=2, points=300, val_points=1000, lr=1e-3)
    out = tmp_path / "m.pt"
    train(TrainConfig(out=out, epochs=1, **kw), progress=False, cases=([case], [case]))
    last = last_checkpoint_path(out)
    state = read_checkpoint(last)
    state["train_state"]["best_loss"] = 0.0  # a best no later epoch can beat
    torch.save(state, last)
    same = train(TrainConfig(out=out, epochs=2, resume=True, **kw), progress=False, cases=([case], [case]))
    assert same["best_loss"] == 0.0 and read_checkpoint(out)["extra"]["best_epoch"] == 1
    torch.save(state, last)
    other = dataclasses.replace(case, name="another_case")
    moved = train(TrainConfig(out=out, epochs=2, resume=True, **kw), progress=False, cases=([case], [other]))
    assert moved["best_loss"] == moved["history"][-1]["val_loss"] > 0.0
    assert read_checkpoint(out)["extra"]["best_epoch"] == 2
    assert read_checkpoint(out)["extra"]["val_cases"] == ["another_case"]


def test_init_fine_tunes_from_a_models_weights_with_its_architecture(tmp_path):
    # `nudf train --init MODEL`: a new run (fresh optimiser and schedule) that starts from MODEL's weights and
    # keeps MODEL's architecture even when --preset says otherwise.
    case = _analytic_case()
    kw = dict(data=tmp_path, steps_per_epoch=2, points=300, val_points=1000, epochs=1)
    base = tmp_path / "base.pt"
    train(TrainConfig(out=base, preset="tiny", lr=1e-3, **kw), progress=False, cases=([case], [case]))
    start = read_checkpoint(base)
    tuned = train(TrainConfig(out=tmp_path / "ft.pt", preset="small", lr=1e-12, init=base, **kw), progress=False,
                  cases=([case], [case]))
    model = tuned["model"]
    assert model.config == ModelConfig.from_dict(dict(start["config"])) != ModelConfig.preset("small")
    weights = model.state_dict()
    for name, value in start["state_dict"].items():  # lr 1e-12: the weights are still the initial model's
        assert torch.allclose(weights[name].float(), value.float(), atol=1e-6), name
    fresh = train(TrainConfig(out=tmp_path / "fresh.pt", preset="tiny", lr=1e-12, **kw), progress=False,
                  cases=([case], [case]))
    assert tuned["history"][0]["val_loss"] < fresh["history"][0]["val_loss"]
    with pytest.raises(InputError, match="--init"):
        TrainConfig(out=tmp_path / "x.pt", data=tmp_path, init=base, resume=True)
    with pytest.raises(CheckpointError, match="No such model"):
        train(TrainConfig(out=tmp_path / "y.pt", init=tmp_path / "missing.pt", **kw), progress=False,
              cases=([case], [case]))


# ------------------------------------------------------------------------------------------ DDP
def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    case = _analytic_case()
    cfg = TrainConfig(data=out_dir, out=Path(out_dir) / "ddp.pt", preset="tiny", epochs=1, steps_per_epoch=3,
                      points=400, val_points=1000, device="cpu", seed=5)
    result = train(cfg, progress=False, cases=([case], [case]))
    torch.save(result["model"].state_dict(), Path(out_dir) / f"w{rank}.pt")
    Path(out_dir, f"r{rank}.json").write_text(json.dumps({k: result[k] for k in ("rank", "world_size")}))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_gloo(tmp_path):
    """Two CPU processes (gloo): different random crops per rank, gradients averaged, identical weights."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert results == [{"rank": 0, "world_size": 2}, {"rank": 1, "world_size": 2}]
    w0, w1 = (torch.load(tmp_path / f"w{r}.pt", weights_only=True) for r in range(2))
    torch.manual_seed(5)  # train() seeds the initial weights with config.seed
    init = NUDFNet(ModelConfig.preset("tiny")).state_dict()
    changed = 0
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], atol=1e-6, rtol=1e-5)  # synchronised by DDP
        changed += int(not torch.allclose(w0[k], init[k]))
    assert changed > 0  # and they did train
    ckpt = read_checkpoint(last_checkpoint_path(tmp_path / "ddp.pt"))
    assert ckpt["extra"]["world_size"] == 2 and ckpt["epoch"] == 1
    torch.testing.assert_close(ckpt["state_dict"]["decoder.0.weight"], w0["decoder.0.weight"])


# ------------------------------------------------------------------------------------------ phantoms
N_SAMPLES = 40_000  # per case; the fixture computes them once and the copies reuse the on-disk cache


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory, phantom_root):
    """A dataset of two cases: the session's compact phantom (with its samples cached) and a copy of it.

    Generating a phantom and its samples is the slow part; the copy exercises the train/val split for free.
    """
    from NUDFCore.data import list_cases
    from NUDFCore.sampling import load_or_sample

    root = tmp_path_factory.mktemp("phantoms")
    shutil.copytree(phantom_root / "case000", root / "case000")
    load_or_sample(list_cases(root)[0], n_points=N_SAMPLES, seed=0)
    shutil.copytree(root / "case000", root / "case001")
    return root


def test_tiny_model_overfits_one_phantom_below_1mm(phantom_data, tmp_path):
    """The learning signal is right end to end: crop, samples, loss and model reach < 1 mm near the surface."""
    from NUDFCore.data import list_cases
    from NUDFCore.sampling import load_or_sample

    data = tmp_path / "one"
    data.mkdir()
    shutil.copytree(phantom_data / "case000", data / "case000")
    samples = load_or_sample(list_cases(data)[0], n_points=N_SAMPLES, seed=0)
    assert (samples.distance_mm < 2.0).sum() > 5000
    cfg = TrainConfig(data=data, out=tmp_path / "m.pt", preset="tiny", epochs=3, steps_per_epoch=30, points=3000,
                      lr=3e-3, val_fraction=0.0, sample_points=N_SAMPLES, augment=False, val_points=10_000, seed=0)
    # the same validation crop scored by the untrained network (train() seeds its initial weights the same way)
    case = prepare_case(list_cases(data)[0], cfg, cfg.model_config())
    torch.manual_seed(cfg.seed)
    before = evaluate(NUDFNet(cfg.model_config()), validation_crops([case], cfg.model_config(), 10_000, 0),
                      torch.device("cpu"))
    result = train(cfg, progress=False)
    hist = result["history"]
    best = min(h["val_near_mae_mm"] for h in hist)
    trace = " -> ".join(f"{h['val_near_mae_mm']:.3f}" for h in hist)
    print(f"\nnear-surface mean |pred - true|: untrained {before['near_mae_mm']:.3f} -> {trace} mm; "
          f"loss {before['loss']:.3f} -> {hist[-1]['val_loss']:.3f} mm; "
          f"false-surface rate {before['false_surface_rate']:.3f} -> {hist[-1]['val_false_surface_rate']:.3f}")
    assert best < 1.0  # the bar
    # ... and clearly better than the untrained net (a near-constant output already scores ~0.7 mm near the
    # surface, so the loss over all samples, far ones and hard negatives included, is the sharper check)
    assert best < 0.8 * before["near_mae_mm"]
    assert hist[-1]["val_loss"] < 0.4 * before["loss"]
    best = load_checkpoint(result["best"])
    assert best.checkpoint_info["extra"]["metrics"]["val_near_mae_mm"] == pytest.approx(
        min(hist, key=lambda h: h["val_loss"])["val_near_mae_mm"])


def test_cli_train_one_epoch_then_resume(phantom_data, tmp_path, capsys):
    out = tmp_path / "m.pt"
    args = ["train", "--data", str(phantom_data), "--out", str(out), "--preset", "tiny", "--epochs", "1",
            "--steps-per-epoch", "3", "--points", "500", "--val-fraction", "0.5", "--threads", "2",
            "--sample-points", str(N_SAMPLES)]
    assert cli_main(args) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err  # tqdm bars with running loss
    model = load_checkpoint(out)
    assert model.config.crop_n == 32
    extra = model.checkpoint_info["extra"]
    assert sorted(extra["train_cases"] + extra["val_cases"]) == ["case000", "case001"]
    assert not extra["validation_on_training_cases"]
    assert cli_main(args) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert cli_main(args[:8] + ["2"] + args[9:] + ["--resume"]) == 0
    state = read_checkpoint(last_checkpoint_path(out))
    assert state["epoch"] == 2 and [h["epoch"] for h in state["train_state"]["history"]] == [1, 2]
    assert state["train_state"]["step"] == 6
