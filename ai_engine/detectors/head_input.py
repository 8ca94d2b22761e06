"""What both hemorrhage detectors require of a series before reading it as a non-contrast head CT, and how both
name a bleed's side."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ai_engine.contrast import declares_contrast
from ai_engine.errors import DetectorInputError
from ai_engine.volume import Volume

MAX_HEAD_CM2 = 400.0  # an adult head's cross-section is at most ~250 cm^2; a chest or abdomen is 450 and more
HEAD_MIN_COVERAGE_MM = 30.0  # less: a few slices, which cannot show a head free of blood
HEAD_FULL_COVERAGE_MM = 100.0  # less: the result says how little of the head it read
VALIDATED_NOISE_HU = 8.0  # the noisiest held-out protocol (model card); above it the result says so
MAX_BRAIN_NOISE_HU = 14.0  # edge-enhanced noise of 15.6 HU made ich_baseline page 1 of 6 bleed-free heads (model card)
NOISE_SMOOTHING_MM = 2.0
BRAIN_SMOOTHING_MM = 5.0  # where the brain is, found through noise many times a soft kernel's
NOISE_EDGE_MM = 3.0
BRAIN_HU = (15.0, 50.0)


def head_ct_notes(volume: Volume, detector: str) -> list[str]:
    """Refuse (DetectorInputError) a series that declares a contrast agent (enhancing vessels read as blood: a
    13.5 mL "subdural" at 1.000), whose body is wider than a head (a chest's bones read as a 260 mL hemorrhage),
    that covers too little of a head to call it free of blood (two slices of a bleeding head scored a plain
    negative) or whose brain is as noisy as a sharp-kernel reconstruction's (edge-enhanced noise paged bleed-free
    heads); the notes for a result read from less than a whole head or from a noisier image than the detectors
    were validated on."""
    if declares_contrast(volume.contrast_agent):
        raise DetectorInputError(f"{detector} reads non-contrast head CT; this series declares the contrast agent "
                                 f"{volume.contrast_agent!r} (Contrast/Bolus Agent): check the routing rule")
    area = body_cross_section_cm2(volume)
    if area > MAX_HEAD_CM2:
        raise DetectorInputError(f"{detector}: the body's median cross-section is {area:.0f} cm^2, more than a "
                                 f"head's (under {MAX_HEAD_CM2:g}); not a head CT: check the routing rule")
    extent_mm = coverage_mm(volume)
    if extent_mm < HEAD_MIN_COVERAGE_MM:
        raise DetectorInputError(f"{detector}: the series covers {extent_mm:.1f} mm along the body axis, less than "
                                 f"{HEAD_MIN_COVERAGE_MM:g} mm: too little of a head to call it free of blood")
    noise = brain_noise_hu(volume)
    if noise is not None and noise > MAX_BRAIN_NOISE_HU:
        raise DetectorInputError(f"{detector}: pixel noise in the brain is {noise:.0f} HU, more than "
                                 f"{MAX_BRAIN_NOISE_HU:g} HU: a bone or edge-enhancing kernel, or very thin slices? "
                                 f"Hemorrhage is read on a soft-tissue reconstruction of 2.5-5 mm: check the routing "
                                 f"rule")
    notes = []
    if extent_mm < HEAD_FULL_COVERAGE_MM:
        notes.append(f"the series covers only {extent_mm:.0f} mm along the body axis (a head CT covers "
                     f"{HEAD_FULL_COVERAGE_MM:g} mm or more): nothing outside it was searched")
    if noise is not None and noise > VALIDATED_NOISE_HU:
        notes.append(f"pixel noise in the brain is {noise:.0f} HU, more than the {VALIDATED_NOISE_HU:g} HU of the "
                     f"noisiest held-out protocol: accuracy at this noise was not measured (model card)")
    return notes


def brain_noise_hu(volume: Volume, samples: int = 8) -> float | None:
    """Pixel noise (HU) of brain tissue: the robust standard deviation (1.4826 MAD) of each sampled slice's
    difference from its own ``NOISE_SMOOTHING_MM`` Gaussian smoothing, over voxels whose ``BRAIN_SMOOTHING_MM``
    smoothing is brain (``BRAIN_HU``) at least ``NOISE_EDGE_MM`` inside such tissue; slices from the middle of the
    series. None when no slice shows enough brain."""
    pixel_mm = np.asarray(volume.spacing_mm[1:], dtype=np.float64)
    edge = max(int(round(NOISE_EDGE_MM / float(pixel_mm.min()))), 1)
    depth = volume.array.shape[0]
    residuals = []
    for index in np.unique(np.linspace(0.3 * depth, 0.7 * (depth - 1), samples).astype(int)):
        image = volume.array[index].astype(np.float32)
        region = ndimage.gaussian_filter(image, BRAIN_SMOOTHING_MM / pixel_mm)
        brain = ndimage.binary_erosion((region > BRAIN_HU[0]) & (region < BRAIN_HU[1]), iterations=edge)
        residuals.append((image - ndimage.gaussian_filter(image, NOISE_SMOOTHING_MM / pixel_mm))[brain])
    residual = np.concatenate(residuals) if residuals else np.zeros(0)
    if residual.size < 1000:
        return None
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def coverage_mm(volume: Volume) -> float:
    """The slices times the table's step between them (with a gantry tilt, longer than their spacing along the
    tilted slice normal)."""
    step = volume.spacing_mm[0] * np.asarray(volume.direction[2]) + np.asarray(volume.shear_mm)
    return volume.array.shape[0] * float(np.linalg.norm(step))


def body_cross_section_cm2(volume: Volume, samples: int = 12) -> float:
    """Median area (cm^2) of the largest object above -300 HU, holes filled, over up to ``samples`` slices that
    show one (a table apart from the body is a separate, smaller object)."""
    pixel_cm2 = volume.spacing_mm[1] * volume.spacing_mm[2] / 100.0
    areas = []
    for index in np.unique(np.linspace(0, volume.array.shape[0] - 1, samples).astype(int)):
        labels, count = ndimage.label(volume.array[index] > -300.0)
        if count:
            largest = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
            areas.append(float(ndimage.binary_fill_holes(largest).sum()) * pixel_cm2)
    return float(np.median(areas)) if areas else 0.0


def head_side(columns: np.ndarray, midline: float) -> str:
    """"L" or "R" for a bleed's voxel ``columns`` in an LPS volume (they run toward the patient's left), "B" for one
    across the ``midline`` column (a quarter or more on each side: a falx subdural, blood in the third ventricle),
    whose centre fell to either side by a fraction of a millimetre."""
    left = float(np.mean(columns > midline))
    return "B" if 0.25 <= left <= 0.75 else "L" if left > 0.5 else "R"
