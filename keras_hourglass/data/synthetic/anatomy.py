"""Synthetic breast anatomy: outline, skin line, pectoral muscle and power-law parenchyma.

Everything is drawn with the chest wall on the LEFT (column 0) in a "density" frame: 0 = air/fat,
larger = denser (brighter in MONOCHROME2). Right breasts are mirrored later, when stored.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


def power_law_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator,
                    anisotropy: float = 1.0) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum (FFT filtering of white noise).

    Args:
        shape: (H, W).
        beta: spectral exponent of the power (mammographic parenchyma: about 3).
        rng: the random generator.
        anisotropy: > 1 stretches structures along x (ducts and ligaments running from the chest
            wall to the nipple); 1 is isotropic.

    Returns:
        float32 `[H, W]`, zero mean, unit standard deviation.
    """
    h, w = shape
    # White Gaussian noise drawn directly in the (real-FFT) frequency domain, shaped by f^(-beta/2)
    # and brought back with one inverse FFT (float32: half the work of filtering spatial noise).
    spectrum = np.empty((h, w // 2 + 1), np.complex64)
    spectrum.real = rng.standard_normal((h, w // 2 + 1), dtype=np.float32)
    spectrum.imag = rng.standard_normal((h, w // 2 + 1), dtype=np.float32)
    spectrum *= np.exp(_log_frequency_squared(h, w, float(anisotropy)) * np.float32(-beta / 4.0))
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(h, w))
    field -= field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=8)
def _log_frequency_squared(h: int, w: int, anisotropy: float = 1.0) -> np.ndarray:
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None] / np.float32(anisotropy)
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :] * np.float32(anisotropy)
    f2 = fy * fy + fx * fx
    f2[0, 0] = 1.0
    out = np.log(f2)
    out.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class BreastGeometry:
    """The outline of one synthetic breast (chest wall at x = 0).

    Attributes:
        center_y: row of the nipple axis.
        semi_y: vertical semi-axis (pixels).
        semi_x: horizontal extent from the chest wall (pixels).
        harmonics: (k, amplitude, phase) wobble of the outline.
        pectoral: (height, width) of the pectoral-muscle triangle (MLO), (0, 0) for CC.
        density: fibroglandular fraction in [0, 1] (BI-RADS a..d ~ 0.1..0.8).
        beta: spectral exponent of the parenchyma.
    """

    center_y: float
    semi_y: float
    semi_x: float
    harmonics: tuple[tuple[int, float, float], ...]
    pectoral: tuple[float, float]
    density: float
    beta: float


def draw_geometry(shape: tuple[int, int], view: str, rng: np.random.Generator,
                  density: float | None = None) -> BreastGeometry:
    """Draws a breast outline for a view.

    Args:
        shape: (H, W) of the image.
        view: "CC" or "MLO" (MLO adds the pectoral muscle and a taller outline).
        rng: the random generator.
        density: fibroglandular fraction; drawn when None.

    Returns:
        The `BreastGeometry`.
    """
    h, w = shape
    mlo = view == "MLO"
    semi_y = h * rng.uniform(0.40, 0.47) if mlo else h * rng.uniform(0.33, 0.44)
    center_y = h * (rng.uniform(0.50, 0.56) if mlo else rng.uniform(0.47, 0.53))
    semi_x = w * rng.uniform(0.58, 0.86)
    harmonics = tuple((k, float(rng.uniform(0.0, 0.025)), float(rng.uniform(0, 2 * np.pi))) for k in (2, 3, 5))
    pectoral = (h * rng.uniform(0.35, 0.6), w * rng.uniform(0.12, 0.25)) if mlo else (0.0, 0.0)
    if density is None:
        density = float(np.clip(rng.beta(2.0, 3.0), 0.05, 0.9))
    return BreastGeometry(float(center_y), float(semi_y), float(semi_x), harmonics, pectoral, float(density),
                          float(rng.uniform(2.7, 3.3)))


def elliptical_radius(geo: BreastGeometry, shape: tuple[int, int]) -> np.ndarray:
    """Normalised radius (1 on the skin) of every pixel centre; the outline wobbles with angle.

    Args:
        geo: the geometry.
        shape: (H, W).

    Returns:
        float32 `[H, W]`.
    """
    h, w = shape
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5 - geo.center_y) / geo.semi_y
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / geo.semi_x
    r = np.sqrt(y * y + x * x)
    # cos(k theta + phase) = Re(u**k * e^(i phase)) with u = (x + i y) / r: no trigonometry per pixel.
    u = (x + 1j * y).astype(np.complex64) / np.maximum(r, np.float32(1e-6))
    powers = {1: u}
    wobble = np.ones_like(r)
    for k, amp, phase in geo.harmonics:
        if k not in powers:
            powers[k] = u ** k
        wobble += np.float32(amp) * (powers[k] * np.complex64(np.exp(1j * phase))).real
    return (r / wobble).astype(np.float32)


def pectoral_mask(geo: BreastGeometry, shape: tuple[int, int]) -> np.ndarray:
    """Soft mask (0..1) of the pectoral muscle triangle at the top of the chest wall (MLO only)."""
    h, w = shape
    ph, pw = geo.pectoral
    if ph <= 0 or pw <= 0:
        return np.zeros(shape, np.float32)
    y = np.arange(h, dtype=np.float32)[:, None] + 0.5
    x = np.arange(w, dtype=np.float32)[None, :] + 0.5
    # Signed distance-like value to the muscle edge x / pw + y / ph = 1 (slightly curved).
    edge = x / pw + (y / ph) ** 1.15
    return np.clip((1.0 - edge) * 12.0 + 0.5, 0.0, 1.0).astype(np.float32)


def breast_density_map(geo: BreastGeometry, shape: tuple[int, int], rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders the normal breast.

    Args:
        geo: the geometry.
        shape: (H, W).
        rng: the random generator.

    Returns:
        (density [H, W] float32, thickness [H, W] float32 in [0, 1] (0 = air), tissue mask where
        lesions may be placed (inside the breast, away from skin and muscle) as bool).
    """
    r = elliptical_radius(geo, shape)
    # Compressed breast: constant thickness inside, falling off over the outer ~12 % to the skin.
    thickness = np.clip((1.0 - r) / 0.12, 0.0, 1.0) ** 0.6
    # Fibroglandular tissue: thresholded power-law noise, concentrated in the central region.
    noise = power_law_noise(shape, geo.beta, rng)
    fine = power_law_noise(shape, 2.0, rng, anisotropy=1.5)  # slightly elongated towards the nipple
    envelope = np.clip(1.15 - r ** 1.6, 0.0, 1.0)
    threshold = float(np.interp(geo.density, [0.0, 1.0], [1.4, -1.0]))
    gland = 1.0 / (1.0 + np.exp(-(noise + 0.35 * fine - threshold) * 2.2))
    density = 0.08 + 0.55 * gland * envelope
    # Skin line: a thin denser rim just inside the outline.
    skin_width = 0.012 + 0.006 * rng.random()
    skin = np.exp(-(((r - (1.0 - skin_width)) / (skin_width * 0.6)) ** 2)) * (r <= 1.0)
    density = density + 0.35 * skin
    muscle = pectoral_mask(geo, shape)
    density = density * (1.0 - muscle) + muscle * (0.62 + 0.04 * fine)
    thickness = np.maximum(thickness, muscle * (r < 1.3))
    allowed = (r < 0.78) & (muscle < 0.01)
    return density.astype(np.float32), thickness.astype(np.float32), allowed
