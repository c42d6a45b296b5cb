"""Domain-randomisation styles: named groups of everything that varies between scans but does not define the LAA.

Why styles: a network trained on one phantom look learns that look (its intensities, its neck shape, its
clean lumen), not the appendage. Following SynthSeg (Billot et al., Medical Image Analysis 2023), each case
draws every nuisance from a wide range, so that the only stable signal left is the anatomy. Grouping the
nuisances into named styles lets an experiment *hold one out*: generate the training set with a style's
probability at 0 and test on cases that have it (``--exclude-style`` / ``--only-style``).

Each style is drawn independently per case with the probability in :data:`STYLES`; a case records the
styles it drew in ``meta.json`` (``"styles"``). The styles take a fixed number of random draws whatever the
probabilities, so excluding a style changes neither the seed's morphology nor its other styles (the anatomy can
still differ: a different mouth can make the generator redraw the LAA).

Styles
------
``mixing``
    Inhomogeneous opacification of the LAA inside an unchanged cavity wall: slow-flow dimming toward the
    tip, swirls of contrast mixing, pockets 0-300 HU below the blood pool, sometimes a poorly filled lobe.
``trabeculae``
    Pectinate muscles (ridges along the wall, 0.6-1.6 mm radius) and a few trabecular cords across the
    distal lumen, at myocardial HU, and the pectinate band: the comb of fine pectinate muscles that lines a
    real appendage is too fine to resolve, so the blood dims over the last 1-4 mm before the cavity wall
    (pulled 15-70 % of the way to the myocardium at the wall, patchy, absent in the smooth neck). All of it
    lies *inside* the cavity: the ground truth stays the cavity wall (the envelope outside the muscles), as
    radiologists and TotalSegmentator delineate it.
``wide_mouth``
    A flared, tapered mouth with no narrowing between the LA and the LAA body.
``narrow_neck``
    A pronounced waist just beyond the ostium (drawn only when ``wide_mouth`` is not).
``la_lobes``
    A left atrium beyond a single ellipsoid: one to three extra bulges away from the appendage.
``tight_neighbours``
    Neighbours (LCx, pulmonary artery, LV free wall, left superior pulmonary vein) close to the LAA with
    thin or no fat planes; the LV is moved until its free wall presses 0-4 mm into the appendage's side, so
    there the cavity's blood meets myocardium with no fat between (the cavity itself is unchanged).
``septum``
    One or two other contrast-filled pools (a vessel such as the left superior pulmonary vein or the pulmonary
    artery, or a chamber such as a fold of the LA body) lying against the appendage across a thin septum of
    wall and fat (1.2-3.5 mm from the cavity's blood to theirs), as the real appendage lies on its
    neighbours: beyond the cavity wall the HU dips, then rises to blood again. The cavity is unchanged.
``artefacts``
    Streaks from dense contrast, slab-to-slab intensity steps and motion blur of whole slabs.
``thick_slices``
    1.5-3 mm slices (routine chest CT) instead of the usual mix.

Always randomised, whatever the style: every tissue's HU (blood pool 150-650 HU), noise level
(10-70 HU) and texture, PSF (sigma 0.4-1.1 mm, or 1.1-2.0 mm for the motion-smeared edges of non-gated
chest CT in a quarter of the cases), voxel spacing, orientation, pose, and the wall thicknesses: the LA body's
1-3 mm, the appendage's from 0.3 mm up to the LA's (a thin appendage wall is unresolved in routine CT,
where the blood then meets the epicardial fat almost directly; the cavity wall is still the ground truth).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ..errors import InputError

#: Default probability that a case draws each style.
STYLES: dict[str, float] = {
    "mixing": 0.6,
    "trabeculae": 0.7,
    "wide_mouth": 0.35,
    "narrow_neck": 0.3,
    "la_lobes": 0.5,
    "tight_neighbours": 0.35,
    "artefacts": 0.35,
    "thick_slices": 0.25,
    "septum": 0.35,
}

#: The first eight styles draw their uniforms from the case's generator itself; styles added after them draw
#: theirs from a generator seeded by those draws, so adding a style changed no existing seed's case.
_STYLES_FROM_CASE_RNG = 8


def style_probabilities(exclude: Iterable[str] = (), only: Iterable[str] = (),
                        base: Mapping[str, float] | None = None) -> dict[str, float]:
    """Probabilities with the styles in ``exclude`` never drawn and those in ``only`` always drawn."""
    probs = dict(STYLES if base is None else base)
    exclude, only = list(exclude), list(only)
    unknown = sorted((set(exclude) | set(only)) - set(STYLES))
    if unknown:
        raise InputError(f"Unknown phantom style(s) {', '.join(unknown)}: use {', '.join(STYLES)}.")
    both = sorted(set(exclude) & set(only))
    if both:
        raise InputError(f"Style(s) {', '.join(both)} cannot be both excluded and forced.")
    if "wide_mouth" in only and "narrow_neck" in only:
        raise InputError("A case cannot have both a wide mouth and a narrow neck.")
    for name in exclude:
        probs[name] = 0.0
    for name in only:
        probs[name] = 1.0
    bad = [k for k, v in probs.items() if k not in STYLES or not 0.0 <= float(v) <= 1.0]
    if bad:
        raise InputError(f"Style probabilities must be in [0, 1] for known styles (bad: {', '.join(bad)}).")
    return probs


def draw_styles(rng: np.random.Generator, probs: Mapping[str, float]) -> frozenset[str]:
    """The styles of one case: one uniform draw per style, in a fixed order, whatever the probabilities."""
    u = rng.random(_STYLES_FROM_CASE_RNG)
    later = np.random.default_rng(np.frombuffer(u.tobytes(), dtype=np.uint32))
    u = np.concatenate([u, later.random(len(STYLES) - _STYLES_FROM_CASE_RNG)])
    drawn = {name for name, x in zip(STYLES, u) if x < float(probs.get(name, 0.0))}
    if {"wide_mouth", "narrow_neck"} <= drawn:  # exclusive: a forced one wins, else the wide mouth
        drawn.discard("wide_mouth" if float(probs.get("narrow_neck", 0.0)) >= 1.0 else "narrow_neck")
    return frozenset(drawn)
