"""NUDFNet shapes, ranges, chunking and gradients; checkpoint round trip and every broken-file error."""
import json
import os

import numpy as np
import pytest
import torch

from NUDFCore import __version__
from NUDFCore.errors import CheckpointError, InputError
from NUDFCore.model import (
    CHECKPOINT_FORMAT,
    ModelConfig,
    NUDFNet,
    load_checkpoint,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)

torch.set_num_threads(2)


class _Opaque:
    """An arbitrary Python object: a weights_only load must refuse to unpickle it."""


def _tiny(**kw) -> NUDFNet:
    torch.manual_seed(0)
    return NUDFNet(ModelConfig.preset("tiny", **kw)).eval()


def _crop(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, n, n, n, generator=g) * 2 - 1


def _points(b=2, n=1000, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g) * 2 - 1


def test_feature_pyramid_and_output_shape():
    m = _tiny()
    feats = m.encode(_crop())
    assert [tuple(f.shape) for f in feats] == [(2, 1, 32, 32, 32), (2, 8, 32, 32, 32), (2, 16, 16, 16, 16),
                                               (2, 16, 8, 8, 8)]
    assert m.config.feature_size == (1 + 8 + 16 + 16) * 7 + 3
    u = m.decode(feats, _points())
    assert u.shape == (2, 1000) and u.dtype == torch.float32
    with pytest.raises(InputError):
        m.encode(torch.zeros(1, 32, 32, 32))


@pytest.mark.parametrize("bias", [-50.0, 50.0])
def test_output_is_clamped_to_zero_and_truncation(bias):
    m = _tiny(truncation_mm=4.0)
    with torch.no_grad():
        m.decoder[-1].bias.fill_(bias)
    with torch.no_grad():
        feats = m.encode(_crop())
        raw = m.decode_raw(feats, _points())
        u = m.decode(feats, _points())
    assert (raw < 0).all() if bias < 0 else (raw > 4).all()  # the raw head really is out of range ...
    assert float(u.min()) >= 0.0 and float(u.max()) <= 4.0  # ... and the distance is not
    np.testing.assert_allclose(u.numpy(), 0.0 if bias < 0 else 4.0)


def test_chunked_query_equals_unchunked_and_grad_matches_finite_differences():
    m = _tiny()
    with torch.no_grad():
        feats = m.encode(_crop())
        full = m.decode(feats, _points())
    chunked = m.query(feats, _points(), chunk_size=137)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    u, g = m.query_with_grad(feats, _points(), chunk_size=251)
    torch.testing.assert_close(u, full, atol=1e-5, rtol=1e-5)
    assert g.shape == (2, 1000, 3)
    # central finite differences of the raw output, in float64
    m64 = m.double()
    f64 = [f.double() for f in feats]
    p = _points(b=2, n=20).double()
    _, g64 = m64.query_with_grad(f64, p)
    eps = 1e-6
    for axis in range(3):
        d = torch.zeros(3, dtype=torch.float64)
        d[axis] = eps
        fd = (m64.decode_raw(f64, p + d) - m64.decode_raw(f64, p - d)) / (2 * eps)
        torch.testing.assert_close(g64[..., axis], fd.detach(), atol=1e-5, rtol=1e-4)


def test_displaced_samples_use_physical_displacement():
    c = ModelConfig.preset("tiny", displacement_mm=3.5)
    assert c.displacement_norm == pytest.approx(3.5 / 35.0)
    m = NUDFNet(c)
    assert sorted(m.offsets.abs().sum(dim=1).tolist()) == pytest.approx([0.0] + [0.1] * 6)


def test_presets_and_config_validation():
    small = ModelConfig.preset("small")
    assert small.crop_n == 64 and ModelConfig.preset("paper").crop_n == 128
    assert ModelConfig.preset("small", crop_n=96).crop_n == 96
    assert ModelConfig.from_dict(json.loads(json.dumps(small.to_dict()))) == small
    for bad in ({"channels": []}, {"norm": "layer"}, {"crop_n": 8}, {"truncation_mm": 0}):
        with pytest.raises(InputError):
            ModelConfig(**bad)
    with pytest.raises(InputError):
        ModelConfig.preset("huge")
    with pytest.raises(InputError):
        ModelConfig.from_dict({"channels": [8], "colour": "red"})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip(tmp_path):
    m = _tiny(truncation_mm=3.0, crop_size_mm=60.0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(_crop(), _points()).sum().backward()
    opt.step()
    path = save_checkpoint(m, tmp_path / "m.pt", extra={"data": "phantoms x3", "seed": 7}, optimizer=opt,
                           epoch=4, train_state={"step": 12, "rng": np.random.default_rng(1).bit_generator.state})
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    assert isinstance(loaded, NUDFNet) and not loaded.training
    assert loaded.config == m.config and loaded.config.crop_size_mm == 60.0
    assert loaded.checkpoint_info["extra"] == {"data": "phantoms x3", "seed": 7}
    assert loaded.checkpoint_info["nudfcore_version"] == __version__ and loaded.checkpoint_info["epoch"] == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(_crop()), _points()),
                                   m.decode(m.encode(_crop()), _points()), atol=0, rtol=0)
    data = read_checkpoint(path)
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(data["optimizer"])
    assert data["train_state"]["step"] == 12
    rng = np.random.default_rng()
    rng.bit_generator.state = data["train_state"]["rng"]
    assert rng.random() == np.random.default_rng(1).random()


def test_save_refuses_non_json_extra_and_missing_folder(tmp_path):
    with pytest.raises(InputError):
        save_checkpoint(_tiny(), tmp_path / "m.pt", extra={"x": object()})
    with pytest.raises(InputError):
        save_checkpoint(_tiny(), tmp_path / "nope" / "m.pt")
    assert not (tmp_path / "m.pt").exists()


@pytest.fixture()
def good_ckpt(tmp_path):
    return save_checkpoint(_tiny(), tmp_path / "good.pt", extra={"seed": 0})


def test_missing_and_empty_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="No such model checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint(tmp_path, good_ckpt):
    raw = good_ckpt.read_bytes()
    for frac in (0.5, 0.9):
        bad = tmp_path / f"trunc{frac}.pt"
        bad.write_bytes(raw[: int(len(raw) * frac)])
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(bad)


def test_garbage_bytes_and_text_file(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a readable model checkpoint"):
        load_checkpoint(bad)
    html = tmp_path / "download.pt"
    html.write_text("<html><body>404 Not Found</body></html>")
    with pytest.raises(CheckpointError):
        load_checkpoint(html)


def test_torch_file_without_our_keys_and_unsafe_pickle(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"model": _tiny().state_dict()}, other)
    with pytest.raises(CheckpointError, match="not a NUDF model checkpoint"):
        load_checkpoint(other)
    plain = tmp_path / "plain_state_dict.pt"
    torch.save(_tiny().state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a NUDF model checkpoint"):
        load_checkpoint(plain)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"nudf_checkpoint": 1, "obj": _Opaque()}, unsafe)  # not allowed by weights_only
    with pytest.raises(CheckpointError, match="not a plain-weights checkpoint; refusing to run code from it"):
        load_checkpoint(unsafe)


def test_incompatible_version_and_architecture(tmp_path, good_ckpt):
    data = torch.load(good_ckpt, weights_only=True)
    future = dict(data, nudf_checkpoint=CHECKPOINT_FORMAT + 1, nudfcore_version="9.0.0")
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 2.*9.0.0"):
        load_checkpoint(tmp_path / "future.pt")
    alien = dict(data, config=dict(data["config"], architecture="unet"))
    torch.save(alien, tmp_path / "alien.pt")
    with pytest.raises(CheckpointError, match="incompatible model config"):
        load_checkpoint(tmp_path / "alien.pt")
    mismatch = dict(data, config=dict(data["config"], channels=[8, 16, 32]))
    torch.save(mismatch, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "mismatch.pt")
    no_weights = {k: v for k, v in data.items() if k != "state_dict"}
    torch.save(no_weights, tmp_path / "no_weights.pt")
    with pytest.raises(CheckpointError, match="state_dict"):
        load_checkpoint(tmp_path / "no_weights.pt")
