"""What the engine needs that this Python lacks, and how to get it — decided here, asked in the widget.

Slicer users' most common complaints about AI extensions are installs that replace Slicer's own numpy,
SimpleITK or vtk, and a CPU torch where a CUDA one was wanted. So: nothing is installed at import time;
torch goes through the PyTorch Utils extension when it is there (it picks the matching CUDA build); other
packages go through pip one by one; Slicer's bundled core packages are never touched.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import Callable

#: Packages that ship with Slicer and must never be (re)installed by this extension.
PROTECTED_PACKAGES: frozenset[str] = frozenset({"numpy", "vtk", "SimpleITK"})


@dataclass(frozen=True)
class Dependency:
    """An importable module, the distribution that provides it and the version the engine needs."""

    module: str
    distribution: str
    minimumVersion: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}>={self.minimumVersion}"


ENGINE_DEPENDENCIES: tuple[Dependency, ...] = (
    Dependency("numpy", "numpy", "1.24"),
    Dependency("vtk", "vtk", "9.3"),
    Dependency("SimpleITK", "SimpleITK", "2.3"),
    Dependency("torch", "torch", "2.2"),
    Dependency("skimage", "scikit-image", "0.21"),
    Dependency("scipy", "scipy", "1.10"),
    Dependency("psutil", "psutil", "5.9"),
    Dependency("tqdm", "tqdm", "4.60"),
)


def _versionTuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installedVersion(dep: Dependency) -> str | None:
    """The installed version of ``dep``, or None when its module cannot be found."""
    if importlib.util.find_spec(dep.module) is None:
        return None
    try:
        return importlib.metadata.version(dep.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "0"  # importable but without metadata (e.g. Slicer's bundled vtk): trust it


def missingDependencies(
    dependencies: tuple[Dependency, ...] = ENGINE_DEPENDENCIES,
    versionOf: Callable[[Dependency], str | None] = installedVersion,
) -> list[Dependency]:
    """Dependencies that are absent or older than required (bundled-without-metadata counts as present)."""
    out = []
    for dep in dependencies:
        version = versionOf(dep)
        if version is None or (version != "0" and _versionTuple(version) < _versionTuple(dep.minimumVersion)):
            out.append(dep)
    return out


@dataclass
class InstallPlan:
    """How to obtain the missing dependencies; ``blocked`` lists what we refuse to install ourselves."""

    torchViaPyTorchUtils: bool = False
    torchViaPip: bool = False
    pipRequirements: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.torchViaPyTorchUtils or self.torchViaPip or self.pipRequirements or self.blocked)

    def describe(self) -> str:
        """A sentence for the confirmation dialog."""
        lines = []
        if self.torchViaPyTorchUtils:
            lines.append("PyTorch, via the PyTorch Utils extension (it picks the build matching your GPU)")
        if self.torchViaPip:
            lines.append("PyTorch (CPU/CUDA build chosen by pip; install the PyTorch Utils extension for control)")
        lines += self.pipRequirements
        text = "NUDF Segmentation needs these Python packages:\n  - " + "\n  - ".join(lines) if lines else ""
        if self.blocked:
            text += (
                "\n\nThese packages belong to Slicer and will not be modified; update Slicer instead: "
                + ", ".join(self.blocked)
            )
        return text.strip()


def planInstall(missing: list[Dependency], pytorchUtilsAvailable: bool) -> InstallPlan:
    """Decide how each missing dependency is installed (pure: no side effects, easy to test)."""
    plan = InstallPlan()
    for dep in missing:
        if dep.distribution in PROTECTED_PACKAGES:
            plan.blocked.append(dep.requirement)
        elif dep.module == "torch":
            plan.torchViaPyTorchUtils = pytorchUtilsAvailable
            plan.torchViaPip = not pytorchUtilsAvailable
        else:
            plan.pipRequirements.append(dep.requirement)
    return plan


def executeInstall(
    plan: InstallPlan,
    pipInstall: Callable[[str], None],
    installTorchWithPyTorchUtils: Callable[[], object] | None = None,
) -> None:
    """Carry out an already-confirmed plan. Callers pass ``slicer.util.pip_install`` and PyTorch Utils.

    Raises RuntimeError when some packages are Slicer's own and too old (nothing we may fix).
    """
    if plan.torchViaPyTorchUtils:
        if installTorchWithPyTorchUtils is None:
            raise RuntimeError("PyTorch Utils was planned for installing torch but is not available.")
        if installTorchWithPyTorchUtils() is None:
            raise RuntimeError("PyTorch installation was cancelled or failed (PyTorch Utils).")
    if plan.torchViaPip:
        pipInstall("torch>=2.2")
    for requirement in plan.pipRequirements:
        pipInstall(requirement)
    if plan.blocked:
        raise RuntimeError(
            "Slicer's own packages are too old for NUDF Segmentation: " + ", ".join(plan.blocked)
            + ". Please use a newer Slicer."
        )
