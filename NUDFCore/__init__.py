"""NUDFCore: the engine of NUDF Segmentation.

Segments the left atrial appendage (LAA) from cardiac CT as an open surface mesh by learning a Neural
Unsigned Distance Field. The engine has no Slicer dependency; all coordinates are LPS millimetres unless
a parameter's name says otherwise.
"""

__version__ = "0.1.0"

#: What ``nudf segment`` imports, as (import name, distribution, minimum version): the one declaration of the
#: engine's run-time needs. ``pyproject.toml``'s base dependencies list these plus CLI_REQUIREMENTS, and the
#: Slicer module installs exactly these (a test runs a segmentation and compares the modules it loaded).
#: Phantoms, training, reports and benchmarks need more: ``pip install "NUDFCore[dev]"``.
RUNTIME_REQUIREMENTS: tuple[tuple[str, str, str], ...] = (
    ("numpy", "numpy", "1.24"),
    ("scipy", "scipy", "1.10"),
    ("SimpleITK", "SimpleITK", "2.3"),
    ("vtk", "vtk", "9.3"),
    ("torch", "torch", "2.2"),
    ("psutil", "psutil", "5.9"),
)
#: Only the terminal front end needs these (progress bars); the Slicer module reads JSON progress instead.
CLI_REQUIREMENTS: tuple[tuple[str, str, str], ...] = (("tqdm", "tqdm", "4.60"),)
