"""Typed errors of the NUDF engine.

Every error a *user* can cause (bad path, wrong kind of image, bad seed, broken model file) is a
subclass of :class:`NUDFError`, so front ends (CLI, Slicer) can show its message instead of a traceback.
"""


class NUDFError(Exception):
    """Base class of all errors the engine raises on purpose."""


class InputError(NUDFError, ValueError):
    """An argument given by the user is invalid (bad seed, bad option, unknown frame...)."""


class ImageReadError(NUDFError, IOError):
    """A CT could not be read: missing path, corrupt file, empty or mixed DICOM folder."""


class ImageGeometryError(NUDFError, ValueError):
    """An image was read but is not a 3D scalar volume (2D, 4D, vector/RGB...)."""


class MeshIOError(NUDFError, IOError):
    """A mesh could not be read or written (unknown extension, unreadable, empty)."""


class OutputExistsError(NUDFError, FileExistsError):
    """Refusing to overwrite an existing output file without an explicit force flag."""


class OutputWriteError(NUDFError, OSError):
    """An output cannot be written: its folder is missing or read-only, the disk is full, a write failed.

    Raised before the work when the pre-flight check finds the problem, or when the write itself fails (in
    which case nothing of the output is left behind).
    """


class CheckpointError(NUDFError, IOError):
    """A model checkpoint is missing, corrupt, truncated or incompatible with this engine."""


class SegmentationError(NUDFError, RuntimeError):
    """Segmentation could not produce a trustworthy mesh (implausible CT, seed in air, no surface...)."""


class SegmentationCancelled(SegmentationError):
    """The user cancelled a running segmentation (no result, not a failure of the method)."""
