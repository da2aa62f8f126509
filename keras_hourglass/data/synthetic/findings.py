"""Synthetic findings: masses, calcification clusters, architectural distortions, asymmetries.

Each finding carries a latent malignancy score m in [0, 1] (benign ~ Beta(2, 5), high-risk ~
Beta(3, 3), malignant ~ Beta(5, 2), so the classes overlap) and its appearance follows m on average:
the higher m, the more irregular and spiculated the mass, the less sharp its margin, the higher its
contrast, and the more numerous, pleomorphic and tightly clustered its calcifications. Findings are
drawn additively into the density map of `anatomy.breast_density_map` (chest wall on the left).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_hourglass.contract import FINDING_LABELS, FINDING_TYPES

RENDERED_FINDING_TYPES = tuple(t for t in FINDING_TYPES if t != "other")
"""The finding types the generator draws ("other" is never drawn)."""

# P(finding type | label), in RENDERED_FINDING_TYPES order.
TYPE_PROBS = {
    "benign": (0.45, 0.35, 0.0, 0.20),
    "high_risk": (0.35, 0.30, 0.20, 0.15),
    "malignant": (0.50, 0.30, 0.15, 0.05),
}
MALIGNANCY_BETA = {"benign": (2.0, 5.0), "high_risk": (3.0, 3.0), "malignant": (5.0, 2.0)}


@dataclasses.dataclass(frozen=True)
class FindingSpec:
    """What a finding is, shared by the views of one breast (each view draws its own geometry).

    Attributes:
        label: "benign", "high_risk" or "malignant".
        finding_type: one of RENDERED_FINDING_TYPES.
        malignancy: latent score m in [0, 1].
        size: relative size in [0, 1].
    """

    label: str
    finding_type: str
    malignancy: float
    size: float


@dataclasses.dataclass(frozen=True)
class RenderedFinding:
    """A finding drawn into one image (coordinates in the drawing frame, chest wall left).

    Attributes:
        spec: the finding.
        center: (y, x) of the lesion centre.
        tight_box: (y0, x0, y1, x1) of the visible lesion.
        box: the loose, clinical-style annotation box (contains `center`, inside the image).
    """

    spec: FindingSpec
    center: tuple[float, float]
    tight_box: tuple[float, float, float, float]
    box: tuple[float, float, float, float]


def draw_spec(label: str, rng: np.random.Generator) -> FindingSpec:
    """Draws a finding for a label.

    Args:
        label: one of FINDING_LABELS.
        rng: the random generator.

    Returns:
        The `FindingSpec`.
    """
    ftype = RENDERED_FINDING_TYPES[int(rng.choice(len(RENDERED_FINDING_TYPES), p=TYPE_PROBS[label]))]
    a, b = MALIGNANCY_BETA[label]
    return FindingSpec(label, ftype, float(rng.beta(a, b)), float(rng.random()))


def _grid(cy: float, cx: float, half: float, shape: tuple[int, int]):
    """Patch slices around (cy, x) and pixel-centre coordinates relative to the centre."""
    h, w = shape
    y0, y1 = max(0, int(cy - half)), min(h, int(cy + half) + 1)
    x0, x1 = max(0, int(cx - half)), min(w, int(cx + half) + 1)
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _segment_lines(yy, xx, angles, starts, lengths, width, rng) -> np.ndarray:
    """Sum of thin lines radiating from the centre, fading along their length."""
    out = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for ang, s, length in zip(angles, starts, lengths):
        dy, dx = np.sin(ang), np.cos(ang)
        t = yy * dy + xx * dx  # along the line
        d = np.abs(-yy * dx + xx * dy)  # across the line
        along = np.clip((t - s) / max(length, 1e-3), 0.0, 1.0)
        inside = (t >= s) & (t <= s + length)
        w = width * (1.0 - 0.6 * along)
        out += np.where(inside, np.exp(-(d / w) ** 2) * (1.0 - 0.8 * along), 0.0).astype(np.float32)
    return out


def _mass(spec: FindingSpec, yy, xx, scale: float, rng: np.random.Generator) -> np.ndarray:
    m = spec.malignancy
    r0 = scale * (6.0 + 14.0 * spec.size) * (0.9 + 0.3 * m)
    aspect = rng.uniform(1.0, 1.45)
    rot = rng.uniform(0, np.pi)
    cy, sy = np.cos(rot), np.sin(rot)
    u = (xx * cy + yy * sy) / aspect
    v = -xx * sy + yy * cy
    d = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    irregular = m * rng.uniform(0.05, 0.3)
    radius = np.full_like(d, r0)
    for k in range(3, 8):
        radius = radius + r0 * irregular / (k - 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge = 0.6 + 2.2 * m * rng.random()
    body = 1.0 / (1.0 + np.exp(-(radius - d) / edge))
    dome = 0.65 + 0.35 * np.sqrt(np.clip(1.0 - (d / (r0 * 1.3)) ** 2, 0.0, 1.0))
    contrast = rng.uniform(0.07, 0.16) * (0.7 + 0.7 * m)
    out = contrast * body * dome
    if rng.random() < 0.9 * m ** 1.5:  # spiculated
        n = int(rng.integers(5, 18))
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.6, 0.6, n)
        lengths = r0 * rng.uniform(0.6, 2.2, n)
        # Spicules start inside the body (no visible ring of line ends) and taper outwards.
        out = out + contrast * rng.uniform(0.35, 0.6) * _segment_lines(
            yy, xx, angles, r0 * rng.uniform(0.2, 0.5, n), lengths, scale * rng.uniform(0.6, 1.1), rng)
    return out


def _calcifications(spec: FindingSpec, yy, xx, scale: float, rng: np.random.Generator) -> np.ndarray:
    m = spec.malignancy
    n = 3 + int(rng.poisson(2.0 + 9.0 * m))
    spread = scale * (17.0 - 9.0 * m) * rng.uniform(0.7, 1.3)
    if m > 0.5 and rng.random() < m:  # linear / segmental arrangement
        ang = rng.uniform(0, np.pi)
        t = rng.normal(0, spread * 1.3, n)
        pos = np.stack([t * np.sin(ang), t * np.cos(ang)], -1) + rng.normal(0, spread * 0.25, (n, 2))
    else:
        pos = rng.normal(0, spread, (n, 2))
    pos -= pos.mean(axis=0)  # the cluster centre is the lesion centre
    base = rng.uniform(2.0, 4.0)
    out = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), np.float32)
    for py, px in pos:
        # Benign: uniform round specks; malignant: pleomorphic (size and elongation vary).
        diameter = scale * float(np.clip(base + m * rng.uniform(-1.5, 2.0), 2.0, 5.5))
        elong = 1.0 + 1.3 * m * rng.random()
        a = rng.uniform(0, np.pi)
        dy, dx = yy - py, xx - px
        u = (dx * np.cos(a) + dy * np.sin(a)) / elong
        v = -dx * np.sin(a) + dy * np.cos(a)
        sigma = diameter / 2.5
        out += rng.uniform(0.22, 0.45) * np.exp(-(u * u + v * v) / (2 * sigma * sigma)).astype(np.float32)
    return out


def _distortion(spec: FindingSpec, yy, xx, scale: float, rng: np.random.Generator) -> np.ndarray:
    m = spec.malignancy
    n = int(rng.integers(10, 25))
    angles = rng.uniform(0, 2 * np.pi, n)
    lengths = scale * rng.uniform(15, 45, n) * (0.8 + 0.4 * spec.size)
    lines = _segment_lines(yy, xx, angles, np.full(n, scale * 1.5), lengths, scale * rng.uniform(0.7, 1.2), rng)
    core = np.exp(-(yy * yy + xx * xx) / (2 * (scale * 4.0) ** 2))
    return (rng.uniform(0.05, 0.1) * (0.8 + 0.5 * m) * lines + 0.03 * core).astype(np.float32)


def _asymmetry(spec: FindingSpec, yy, xx, scale: float, rng: np.random.Generator) -> np.ndarray:
    from keras_hourglass.data.synthetic.anatomy import power_law_noise

    m = spec.malignancy
    sy, sx = scale * rng.uniform(12, 30, 2) * (0.8 + 0.4 * spec.size)
    rot = rng.uniform(0, np.pi)
    u = xx * np.cos(rot) + yy * np.sin(rot)
    v = -xx * np.sin(rot) + yy * np.cos(rot)
    blob = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    shape = np.broadcast_shapes(yy.shape, xx.shape)
    texture = 0.6 + 0.4 * np.tanh(power_law_noise(shape, 2.5, rng))
    return (rng.uniform(0.05, 0.1) * (0.8 + 0.5 * m) * blob * texture).astype(np.float32)


_RENDERERS = {"mass": _mass, "calcification": _calcifications, "distortion": _distortion,
              "asymmetry": _asymmetry}
_EXTENT = {"mass": 60.0, "calcification": 45.0, "distortion": 50.0, "asymmetry": 75.0}


@dataclasses.dataclass(frozen=True)
class StressSettings:
    """What the synthetic findings make hard, one knob per principle of the loss.

    Attributes:
        box_looseness: the annotation box is the tight box enlarged by a uniform factor in
            [1, box_looseness] (principle (a); default 2.5).
        box_offset: the box centre moves from the lesion centre by up to this fraction of the
            box side on each axis (principle (a); default 0.2, at most 0.5; the lesion centre is
            always kept within a quarter of the box side of the box centre).
        size_spread: each lesion is scaled by a log-uniform factor in [1/size_spread, size_spread]
            (principle (b); default 1 = the sizes of the finding models alone).
        contrast: multiplies every finding's contrast (subtle findings below 1; default 1).
    """

    box_looseness: float = 2.5
    box_offset: float = 0.2
    size_spread: float = 1.0
    contrast: float = 1.0

    def validate(self) -> None:
        """Raises ValueError on an unusable setting."""
        if not 1.0 <= self.box_looseness <= 10.0:
            raise ValueError(f"box_looseness must be in [1, 10], got {self.box_looseness}")
        if not 0.0 <= self.box_offset <= 0.5:
            raise ValueError(f"box_offset must be in [0, 0.5], got {self.box_offset}")
        if not 1.0 <= self.size_spread <= 4.0:
            raise ValueError(f"size_spread must be in [1, 4], got {self.size_spread}")
        if not 0.05 <= self.contrast <= 4.0:
            raise ValueError(f"contrast must be in [0.05, 4], got {self.contrast}")


DEFAULT_STRESS = StressSettings()


def loose_box(tight: tuple[float, float, float, float], center: tuple[float, float], shape: tuple[int, int],
              rng: np.random.Generator, stress: StressSettings = DEFAULT_STRESS) -> tuple[float, float, float, float]:
    """A clinical-style box: the tight box enlarged and offset, containing the centre.

    Args:
        tight: (y0, x0, y1, x1) of the visible lesion.
        center: (y, x) of the lesion centre.
        shape: (H, W) of the image (the box is clipped to it).
        rng: the random generator.
        stress: looseness and offset of the box (`StressSettings`).

    Returns:
        (y0, x0, y1, x1), rounded to 0.1 px.
    """
    y0, x0, y1, x1 = tight
    s = rng.uniform(1.0, stress.box_looseness)
    hh = max(4.0, (y1 - y0) * s * rng.uniform(0.85, 1.15)) / 2
    hw = max(4.0, (x1 - x0) * s * rng.uniform(0.85, 1.15)) / 2
    offset = stress.box_offset
    cy = (y0 + y1) / 2 + rng.uniform(-offset, offset) * 2 * hh
    cx = (x0 + x1) / 2 + rng.uniform(-offset, offset) * 2 * hw
    # Keep the lesion centre inside with a margin of a quarter of the box.
    cy = float(np.clip(cy, center[0] - 0.5 * hh, center[0] + 0.5 * hh))
    cx = float(np.clip(cx, center[1] - 0.5 * hw, center[1] + 0.5 * hw))
    h, w = shape
    box = (max(0.0, cy - hh), max(0.0, cx - hw), min(float(h), cy + hh), min(float(w), cx + hw))
    return tuple(float(np.round(v, 1)) for v in box)  # type: ignore[return-value]


def render_finding(spec: FindingSpec, density: np.ndarray, allowed: np.ndarray, scale: float,
                   rng: np.random.Generator, stress: StressSettings = DEFAULT_STRESS) -> RenderedFinding:
    """Draws one finding into `density` (in place) at a random allowed position.

    Args:
        spec: the finding.
        density: float32 `[H, W]` density map, modified in place.
        allowed: bool `[H, W]` where a lesion centre may go.
        scale: image height / 640 (lesion sizes scale with the image).
        rng: the random generator.
        stress: box looseness / offset, lesion size spread and contrast (`StressSettings`;
            the defaults draw exactly what they drew before the knobs existed).

    Returns:
        The `RenderedFinding` (drawing frame).
    """
    candidates = np.flatnonzero(allowed)
    if candidates.size == 0:
        raise ValueError("no room for a finding in this breast")
    idx = int(candidates[rng.integers(candidates.size)])
    cy = idx // density.shape[1] + rng.random()
    cx = idx % density.shape[1] + rng.random()
    if stress.size_spread != 1.0:
        scale = scale * float(np.exp(rng.uniform(-1.0, 1.0) * np.log(stress.size_spread)))
    sl, yy, xx = _grid(cy, cx, _EXTENT[spec.finding_type] * scale, density.shape)
    contribution = _RENDERERS[spec.finding_type](spec, yy, xx, scale, rng)
    if stress.contrast != 1.0:
        contribution = contribution * np.float32(stress.contrast)
    density[sl] += contribution
    visible = contribution > 0.15 * float(contribution.max())
    rows, cols = np.nonzero(visible)
    tight = (float(sl[0].start + rows.min()), float(sl[1].start + cols.min()),
             float(sl[0].start + rows.max() + 1), float(sl[1].start + cols.max() + 1))
    if spec.finding_type == "calcification":  # centre = cluster centroid (weighted)
        wsum = float(contribution.sum())
        cy = float(sl[0].start + (contribution.sum(axis=1) * (np.arange(contribution.shape[0]) + 0.5)).sum() / wsum)
        cx = float(sl[1].start + (contribution.sum(axis=0) * (np.arange(contribution.shape[1]) + 0.5)).sum() / wsum)
    center = (float(np.clip(cy, tight[0], tight[2])), float(np.clip(cx, tight[1], tight[3])))
    return RenderedFinding(spec, center, tight, loose_box(tight, center, density.shape, rng, stress))
