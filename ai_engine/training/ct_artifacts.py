"""CT artifact augmentation on model-grid slab stacks: beam-hardening streaks, inner-table rims, soft kernels.

All three act on HU stacks of neighbouring slabs (``(3, H, W)``: previous, current, next) and leave
the labels as they are. Streaks and rims change soft-tissue voxels only (bone and air untouched); the
soft kernel blurs each slab as a whole, since spreading the skull into the brain is what it imitates.
They are generic — straight bands at any height, angle, width and sign; a rim of any sign along any
bone edge; any blur up to 1.2 mm — not a copy of the synthetic generator's artifact model, so a
network trained with them learns that a straight band, a bright rim against bone or a blurred skull
edge is not blood whatever draws it. ``augment_case`` draws them over a whole case, so that the
fusion heads also learn what the U-Net's features look like under these artifacts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SOFT_TISSUE_HU = (-100.0, 150.0)  # where an artifact is added: not air, not bone
BONE_HU = 300.0
STREAK_MAX_HU = 25.0  # per band
STREAK_SIGMA_MM = (1.5, 4.0)
STREAK_BANDS = (1, 6)
RIM_MM = (1.0, 4.0)
RIM_HU = (-6.0, 14.0)
KERNEL_MM = (0.0, 1.2)
HU_OFFSET = 4.0  # a whole stack or case shifted by up to +/- this
NOISE_MAX_HU = 4.0  # Gaussian noise of sigma 0..this added
CASE_P = 0.5  # share of whole cases given each artifact (augment_case)
STREAK_EVENTS = (1, 4)  # streaky cases get 1-3 streak events, each at its own height


def _soft_tissue(stack: np.ndarray) -> np.ndarray:
    return (stack > SOFT_TISSUE_HU[0]) & (stack < SOFT_TISSUE_HU[1])


def add_streaks(stack: np.ndarray, rng: np.random.Generator, pixel_mm: float) -> np.ndarray:
    """``stack`` plus 1-5 straight bright or dark bands across the slice, fading through the neighbours.

    Each band: any angle and offset, Gaussian profile of sigma 1.5-4 mm, amplitude +/- 0-25 HU.
    The neighbours get the same bands weighted by a random linear fall-off (a streak fades with height).
    """
    _, rows, cols = stack.shape
    y, x = np.meshgrid((np.arange(rows) - rows / 2) * pixel_mm, (np.arange(cols) - cols / 2) * pixel_mm,
                       indexing="ij")
    field = np.zeros((rows, cols), dtype=np.float32)
    for _ in range(int(rng.integers(*STREAK_BANDS))):
        angle = rng.uniform(0.0, np.pi)
        offset = rng.uniform(-0.35, 0.35) * rows * pixel_mm
        distance = y * np.cos(angle) - x * np.sin(angle) - offset
        sigma = rng.uniform(*STREAK_SIGMA_MM)
        field += np.float32(rng.choice([-1.0, 1.0]) * rng.uniform(0.0, STREAK_MAX_HU)) * np.exp(
            -distance**2 / (2.0 * sigma**2)).astype(np.float32)
    slope = rng.uniform(-1.0, 1.0)
    weights = np.clip(1.0 + slope * (np.arange(len(stack)) - len(stack) // 2), 0.0, 1.0).astype(np.float32)
    return stack + weights[:, None, None] * field[None] * _soft_tissue(stack)


def vary_rim(stack: np.ndarray, rng: np.random.Generator, pixel_mm: float) -> np.ndarray:
    """``stack`` with the soft tissue within 1-4 mm of bone shifted by -6..+14 HU (a beam-hardening rim)."""
    width = rng.uniform(*RIM_MM)
    offset = np.float32(rng.uniform(*RIM_HU))
    out = stack.copy()
    for k, slab in enumerate(stack):
        bone = slab > BONE_HU
        if not bone.any():
            continue
        near = ndimage.distance_transform_edt(~bone, sampling=pixel_mm) <= width
        out[k][near & _soft_tissue(slab)] += offset
    return out


def soften(stack: np.ndarray, rng: np.random.Generator, pixel_mm: float) -> np.ndarray:
    """``stack`` blurred in-plane by a Gaussian of sigma 0-1.2 mm (a softer reconstruction kernel).

    A soft kernel spreads the skull into the first millimetres of brain, where a bright band in the
    blood-density range looks like a thin subdural; training on both teaches the difference.
    """
    sigma = rng.uniform(*KERNEL_MM) / pixel_mm
    return ndimage.gaussian_filter(stack, sigma=(0.0, sigma, sigma), mode="nearest")


def augment_case(slabs: np.ndarray, rng: np.random.Generator, pixel_mm: float) -> np.ndarray:
    """One draw of the artifacts over a whole case's slabs ``(S, H, W)`` (HU), for features the fusion heads learn.

    Each with probability ``CASE_P``: a softer kernel on every slab; 1-3 streak events, each ``add_streaks``
    on three neighbouring slabs at a random height; a rim. Then an HU offset and noise, as the U-Net's stacks.
    """
    out = slabs.astype(np.float32)
    if rng.random() < CASE_P:
        out = soften(out, rng, pixel_mm)
    if rng.random() < CASE_P and len(out) >= 3:
        for _ in range(int(rng.integers(*STREAK_EVENTS))):
            centre = int(rng.integers(1, len(out) - 1))
            out[centre - 1:centre + 2] = add_streaks(out[centre - 1:centre + 2], rng, pixel_mm)
    if rng.random() < CASE_P:
        out = vary_rim(out, rng, pixel_mm)
    noise = np.float32(rng.uniform(0.0, NOISE_MAX_HU)) * rng.standard_normal(out.shape, dtype=np.float32)
    return out + np.float32(rng.uniform(-HU_OFFSET, HU_OFFSET)) + noise
