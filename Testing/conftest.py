"""Session-wide fixtures: one compact phantom case and one small model trained on it.

Generating a phantom and training even a small network are the slow parts of the suite, so they are done
once per session and shared by the segmentation, CLI and Slicer tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The compact phantom every end-to-end test segments (its seed is fixed: the suite is deterministic).
PHANTOM_SEED = 3


def pytest_configure(config):  # noqa: D103 - keep CPU tests predictable on the 2-core CI machine
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A dataset folder holding one compact phantom case (``case000``)."""
    from NUDFCore import phantom

    root = tmp_path_factory.mktemp("phantom_dataset")
    phantom.write_case(phantom.generate_case(PHANTOM_SEED, size="compact"), root / "case000")
    return root


@pytest.fixture(scope="session")
def phantom_case(phantom_root):
    """The :class:`NUDFCore.data.Case` of the shared phantom (``.case_dir`` holds ct.nii.gz, laa.vtp, meta.json)."""
    from NUDFCore.data import list_cases

    return list_cases(phantom_root)[0]


@pytest.fixture(scope="session")
def tiny_model_path(phantom_root, tmp_path_factory) -> Path:
    """A small model trained briefly (240 steps) on the shared phantom: enough for a mesh near its ground truth.

    It has seen only this case, so it demonstrates the pipeline end to end, not generalisation.
    """
    from NUDFCore.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_model") / "tiny.pt"
    cfg = TrainConfig(data=phantom_root, out=out, preset="small", epochs=4, steps_per_epoch=60, points=4000,
                      lr=3e-3, val_fraction=0.0, sample_points=60_000, val_points=10_000, seed=0)
    return Path(train(cfg, progress=False)["best"])
