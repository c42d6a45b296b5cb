"""What the engine needs that this Python lacks, and how to get it — decided here, asked in the widget.

Slicer users' most common complaints about AI extensions are installs that replace Slicer's own numpy,
SciPy, SimpleITK or vtk, and a CPU torch where a CUDA one was wanted. So: nothing is installed at import
time; only what segmentation imports is installed (``NUDFCore.RUNTIME_REQUIREMENTS``, the engine's one
declaration: no phantom, training or report packages); torch goes through the PyTorch Utils extension when
it is there (it picks the matching CUDA build); other packages go through pip one by one, with a constraints
file that pins every Slicer package already installed, so pip can neither upgrade nor replace them as a
side effect; Slicer's bundled packages are never installed by us.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from NUDFCore import RUNTIME_REQUIREMENTS

#: Distributions that ship with Slicer's Python (its SuperBuild's python-* projects and the VTK/ITK
#: wrappings): never installed, upgraded or replaced by this extension.
PROTECTED_PACKAGES: frozenset[str] = frozenset({
    "numpy", "scipy", "SimpleITK", "vtk", "pip", "setuptools", "wheel", "packaging", "requests", "urllib3",
    "certifi", "idna", "charset-normalizer", "pydicom", "dicomweb-client", "six", "python-dateutil",
})


@dataclass(frozen=True)
class Dependency:
    """An importable module, the distribution that provides it and the version the engine needs."""

    module: str
    distribution: str
    minimumVersion: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}>={self.minimumVersion}"


#: Exactly what segmentation imports (mirrors ``NUDFCore.RUNTIME_REQUIREMENTS``; a test checks both against
#: the modules a real run loads).
ENGINE_DEPENDENCIES: tuple[Dependency, ...] = tuple(Dependency(*req) for req in RUNTIME_REQUIREMENTS)
#: torch, installed by PyTorch Utils when present (``torchVersionRequirement=">=" + minimumVersion``).
TORCH_DEPENDENCY: Dependency = next(d for d in ENGINE_DEPENDENCIES if d.module == "torch")


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


def protectedPins(versionOf: Callable[[str], str | None] | None = None) -> list[str]:
    """``name==version`` for every protected distribution installed here (pip constraints)."""

    def installed(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    versionOf = versionOf or installed
    pins = []
    for name in sorted(PROTECTED_PACKAGES, key=str.lower):
        version = versionOf(name)
        if version:
            pins.append(f"{name}=={version}")
    return pins


@dataclass
class InstallPlan:
    """How to obtain the missing dependencies; ``blocked`` lists what we refuse to install ourselves."""

    torchViaPyTorchUtils: bool = False
    torchViaPip: bool = False
    pipRequirements: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    #: pip constraints that hold Slicer's own packages at their installed versions during our installs.
    constraints: list[str] = field(default_factory=list)

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


def planInstall(missing: list[Dependency], pytorchUtilsAvailable: bool, constraints: list[str] | None = None) -> InstallPlan:
    """Decide how each missing dependency is installed (no side effects; ``constraints`` default to
    :func:`protectedPins` of this Python)."""
    plan = InstallPlan(constraints=list(protectedPins() if constraints is None else constraints))
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
    pipInstall: Callable[[list[str]], None],
    installTorchWithPyTorchUtils: Callable[[], object] | None = None,
) -> None:
    """Carry out an already-confirmed plan. Callers pass ``slicer.util.pip_install`` and PyTorch Utils.

    Each pip call gets a list ``[requirement, "--constraint", file]`` (a list, so paths with spaces survive)
    whose file pins Slicer's own packages. Raises RuntimeError when some packages are Slicer's own and too
    old (nothing we may fix).
    """
    if plan.torchViaPyTorchUtils:
        if installTorchWithPyTorchUtils is None:
            raise RuntimeError("PyTorch Utils was planned for installing torch but is not available.")
        if installTorchWithPyTorchUtils() is None:
            raise RuntimeError("PyTorch installation was cancelled or failed (PyTorch Utils).")
    requirements = ([TORCH_DEPENDENCY.requirement] if plan.torchViaPip else []) + plan.pipRequirements
    if requirements:
        fd, constraintsFile = tempfile.mkstemp(prefix="nudf-constraints-", suffix=".txt")
        try:
            with os.fdopen(fd, "w") as f:
                f.write("".join(pin + "\n" for pin in plan.constraints))
            for requirement in requirements:
                pipInstall([requirement, "--constraint", constraintsFile])
        finally:
            os.unlink(constraintsFile)
    if plan.blocked:
        raise RuntimeError(
            "Slicer's own packages are too old for NUDF Segmentation: " + ", ".join(plan.blocked)
            + ". Please use a newer Slicer."
        )
