"""Provenance of a segmentation: which engine, model, seed and options made a mesh, and when.

A mesh alone cannot say how it was obtained; a reviewer (or a cohort table) needs the model file and its hash,
the seed, the resolution and every option. The same record is written as a JSON sidecar by
``nudf segment --out laa.stl`` (``laa.json``) and stored as attributes of the Slicer model node, so a mesh
keeps its history wherever it goes. All coordinates are millimetres, named by their frame.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import __version__
from .errors import InputError, OutputExistsError
from .frames import lps_to_ras

#: Hex digits of the model's SHA-256 kept in the record (64 bits: enough to tell model files apart).
SHA256_PREFIX_LENGTH = 16
#: Prefix of the Slicer node attributes that carry the record (``NUDF.engine_version``, ...).
ATTRIBUTE_PREFIX = "NUDF."
#: The record's keys, in the order they are written.
FIELDS: tuple[str, ...] = (
    "engine", "engine_version", "model_file", "model_sha256", "seed_lps", "seed_ras", "resolution_mm",
    "options", "created_utc", "input_file",
)
#: SegmentOptions fields that are not settings (callbacks) and so are not recorded.
_NOT_RECORDED = {"progress", "cancel", "resolution_mm"}

_hash_cache: dict[tuple, str] = {}


def content_sha256_prefix(path: str | os.PathLike) -> str:
    """First :data:`SHA256_PREFIX_LENGTH` hex digits of the SHA-256 of a file's bytes, or of every file in a
    folder (a DICOM series: names relative to it, then contents, in sorted order); cached per path, sizes and
    modification times, so an unchanged file is read once."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    stats = [(str(f), f.stat()) for f in files]
    key = (str(p.resolve()), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    if key not in _hash_cache:
        h = hashlib.sha256()
        for f in files:
            if p.is_dir():
                h.update(f.relative_to(p).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _hash_cache[key] = h.hexdigest()[:SHA256_PREFIX_LENGTH]
    return _hash_cache[key]


def model_sha256_prefix(path: str | os.PathLike) -> str:
    """First :data:`SHA256_PREFIX_LENGTH` hex digits of the model file's SHA-256 (see :func:`content_sha256_prefix`)."""
    return content_sha256_prefix(path)


def _plain(value: Any) -> Any:
    """A JSON-ready copy: arrays and tuples to lists, numpy scalars to Python numbers, paths to strings."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _options_dict(options: Any) -> dict[str, Any]:
    if options is None:
        from .infer import SegmentOptions

        options = SegmentOptions()
    if dataclasses.is_dataclass(options):
        items = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    elif isinstance(options, Mapping):
        items = dict(options)
    else:
        raise InputError(f"options must be a SegmentOptions or a mapping; got {type(options).__name__}.")
    return items


def segmentation_provenance(
    *,
    seed_lps: Sequence[float],
    options: Any = None,
    model: str | os.PathLike | None = None,
    input_file: str | os.PathLike | None = None,
    created_utc: _dt.datetime | None = None,
) -> dict[str, Any]:
    """The provenance record of one segmentation, as a JSON-ready dict with the keys :data:`FIELDS`.

    Signature (all keyword-only):

    - ``seed_lps``: the seed the run used, 3 numbers in LPS mm (``SegmentationResult.seed_lps``);
    - ``options``: the :class:`~NUDFCore.infer.SegmentOptions` of the run (or a mapping of its fields; None =
      the defaults). ``resolution_mm`` is recorded on its own; callbacks are left out;
    - ``model``: the checkpoint path given to ``segment`` (None = the default model, resolved as ``segment``
      does: ``$NUDF_MODEL`` or the bundled one); a loaded network object is recorded by its type name;
    - ``input_file``: the CT file or DICOM folder read (None for an in-memory volume);
    - ``created_utc``: the time stamp (default: now), written as ISO 8601 in UTC.

    Returns ``{"engine": "NUDFCore", "engine_version", "model_file" (file name), "model_sha256" (first
    16 hex digits, None when the model is not a file), "seed_lps", "seed_ras", "resolution_mm", "options"
    (dict), "created_utc", "input_file" (absolute path or None)}``.
    """
    seed = np.asarray(seed_lps, dtype=np.float64).reshape(-1)
    if seed.shape != (3,) or not np.all(np.isfinite(seed)):
        raise InputError(f"seed_lps must be 3 finite numbers (LPS mm); got {seed_lps!r}.")
    opts = _options_dict(options)
    resolution = opts.get("resolution_mm")
    if model is None:
        from .infer import default_model_path

        model = default_model_path()
    if isinstance(model, (str, os.PathLike)):
        model_file, model_sha = Path(model).name, model_sha256_prefix(model)
    else:
        model_file, model_sha = f"<{type(model).__name__} object>", None
    when = created_utc or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        raise InputError("created_utc must carry a time zone (e.g. datetime.timezone.utc).")
    record = {
        "engine": "NUDFCore",
        "engine_version": __version__,
        "model_file": model_file,
        "model_sha256": model_sha,
        "seed_lps": _plain(seed),
        "seed_ras": _plain(lps_to_ras(seed)),
        "resolution_mm": None if resolution is None else float(resolution),
        "options": _plain({k: v for k, v in opts.items() if k not in _NOT_RECORDED}),
        "created_utc": when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input_file": None if input_file is None else str(Path(input_file).resolve()),
    }
    return record


def sidecar_path(mesh_path: str | os.PathLike) -> Path:
    """Where a mesh's provenance goes: the same name with ``.json`` (``laa.stl`` -> ``laa.json``)."""
    return Path(mesh_path).with_suffix(".json")


def check_sidecar(mesh_path: str | os.PathLike, overwrite: bool) -> Path:
    """The sidecar path of ``mesh_path``, refused before any work when it exists and ``overwrite`` is off."""
    p = sidecar_path(mesh_path)
    if p.is_dir():
        raise InputError(f"{p} is a folder; the provenance of {Path(mesh_path).name} is written there as a file.")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} (the provenance of {Path(mesh_path).name}) already exists; pass --force to replace it.")
    return p


def write_provenance(record: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a record as JSON; the file appears only once complete (no partial sidecar after a failure)."""
    from .io import atomic_output

    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} already exists; pass --force to replace it.")
    text = json.dumps(_plain(dict(record)), indent=2, allow_nan=False) + "\n"
    with atomic_output(p, suffix=".json") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return p


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sidecar written by :func:`write_provenance`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def to_attributes(record: Mapping[str, Any]) -> dict[str, str]:
    """The record as Slicer node attributes: ``NUDF.<field>`` -> text (strings as is, the rest as JSON)."""
    out = {}
    for key, value in record.items():
        value = _plain(value)
        out[ATTRIBUTE_PREFIX + key] = value if isinstance(value, str) else json.dumps(value, allow_nan=False)
    return out


def from_attributes(attributes: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`to_attributes` (attributes without the prefix are ignored)."""
    out: dict[str, Any] = {}
    for name, text in attributes.items():
        if name.startswith(ATTRIBUTE_PREFIX):
            key = name[len(ATTRIBUTE_PREFIX):]
            if key in _STRING_FIELDS:  # kept verbatim: a hash prefix may look like a number
                out[key] = None if text == "null" else text
            else:
                out[key] = json.loads(text)
    return out


#: Fields whose values are text (or None); the others are JSON numbers, lists or objects.
_STRING_FIELDS = {"engine", "engine_version", "model_file", "model_sha256", "created_utc", "input_file"}
