"""One beating-heart model for every synthetic echo writer (EchoNet-Dynamic videos and CAMUS NIfTI).

Geometry (apical four-chamber-like view, apex at the top of the sector). The left ventricle (LV) is a bullet in
its own long-axis frame: ``s`` runs from the endocardial apex ``A`` (``s = 0``) along the long axis ``u`` to the
mitral plane (``s = L``), ``d`` across it (``+d`` lateral wall, on the right of the image; ``-d`` septum). The
endocardial half-width is ``h(s) = W g(s / L)`` with ``g(t) = sqrt(t (2 - t)) (1 - 0.18 t^2)``: round at the apex,
widest below mid-cavity, slightly narrower at the base. Systole shortens the long axis (``L = L_ed (1 - a_L c)``,
the apex stays put and the base descends, as in real hearts) and the width (``W = W_ed (1 - a_W c)``), and
thickens the myocardium, with ``c`` the contraction (0 at end-diastole, 1 at end-systole). The EchoNet
method of discs on this shape gives ``V ~ L W^2`` exactly, so ``EF = 1 - (1 - a_L)(1 - a_W)^2`` and the
shortening fractions are solved from a per-patient target EF.

An akinetic segment (about a quarter of the endocardial boundary: the mid-apical half of the septal or lateral
wall, or the apical cap) keeps its end-diastolic position: ``h(s) = h_c(s) + m(s) (h_ed(s) - h_c(s))`` with ``m`` a
smooth window that is 1 on the segment.

The right ventricle, both atria and a myocardial ring are drawn around it; the LV and its myocardium are painted
last so that the LV blood pool is exactly the analytic region above, which is also what the tracings sample, so a
mask rasterised from a tracing matches the rendered pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medssl_monai.data.synthetic._common import (
    _blur,
    _cv2,
    complex_speckle,
    sector_geometry,
    smooth_noise,
    speckle_amplitude,
)

__all__ = [
    "ABNORMALITIES",
    "LABEL_BACKGROUND",
    "LABEL_LV",
    "LABEL_MYOCARDIUM",
    "LABEL_LA",
    "HeartParams",
    "sample_heart",
    "contraction_curve",
    "lv_half_widths",
    "lv_tracing",
    "heart_labels",
    "HeartRenderer",
]

ABNORMALITIES = ("normal", "reduced_ef", "akinetic_segment")
LABEL_BACKGROUND, LABEL_LV, LABEL_MYOCARDIUM, LABEL_LA = 0, 1, 2, 3  # CAMUS label codes

# Echogenicity (mean backscatter, before speckle, gain and attenuation) of each structure.
_E_BLOOD, _E_MYO, _E_WALL = 0.035, 0.85, 0.6


@dataclass(frozen=True)
class HeartParams:
    """Per-patient heart geometry, function and image settings (pixels; angles in radians).

    ``angle`` tilts the LV long axis from straight down towards the right of the image; ``akinetic_wall`` is
    ``"none"``, ``"septal"``, ``"lateral"`` or ``"apical"``, over ``akinetic_range`` (fractions of ``length_ed``
    along the long axis).
    """

    shape: tuple[int, int]
    apex: tuple[float, float]
    angle: float
    length_ed: float
    half_width_ed: float
    wall_ed: float
    long_shortening: float
    radial_shortening: float
    target_ef: float
    abnormality: str = "normal"
    akinetic_wall: str = "none"
    akinetic_range: tuple[float, float] = (0.0, 0.0)
    systole_fraction: float = 0.36
    rv_apex: tuple[float, float] = (0.0, 0.0)
    rv_angle: float = 0.0
    rv_length: float = 1.0
    rv_half_width: float = 1.0
    la_radii: tuple[float, float] = (1.0, 1.0)
    ra_radii: tuple[float, float] = (1.0, 1.0)
    gain: float = 1.0
    tissue: float = 0.28


def _shape_profile(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(t * (2.0 - t)) * (1.0 - 0.18 * t**2)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def sample_heart(rng: np.random.Generator, shape: tuple[int, int], abnormality: str = "normal") -> HeartParams:
    """Draw one patient: size, orientation, function (EF by abnormality class) and image gain.

    Normal hearts target EF 55-70 %, ``reduced_ef`` 20-45 %, ``akinetic_segment`` 50-62 % before the
    non-contracting segment lowers it further. Sizes scale with the image height (the imaging depth).
    """
    if abnormality not in ABNORMALITIES:
        raise ValueError(f"abnormality must be one of {ABNORMALITIES}, got {abnormality!r}")
    h, w = shape
    length = rng.uniform(0.40, 0.48) * h
    half_width = length * rng.uniform(0.30, 0.35)
    wall = rng.uniform(0.035, 0.05) * h
    angle = np.radians(4.0 + rng.uniform(-6.0, 6.0))
    apex = ((w - 1) / 2.0 + rng.uniform(-0.01, 0.03) * h, rng.uniform(0.12, 0.16) * h)
    ef = {"normal": (55.0, 70.0), "reduced_ef": (20.0, 45.0), "akinetic_segment": (50.0, 62.0)}[abnormality]
    target_ef = rng.uniform(*ef)
    frac = target_ef / 100.0
    # Longitudinal shortening ~ 15 % in a normal heart; the radial fractional shortening makes up the rest.
    long_short = 0.25 * frac * rng.uniform(0.85, 1.15)
    radial_short = 1.0 - np.sqrt((1.0 - frac) / (1.0 - long_short))
    wall_kind, wall_range = "none", (0.0, 0.0)
    if abnormality == "akinetic_segment":
        wall_kind = ("septal", "lateral", "apical")[int(rng.integers(3))]
        wall_range = (-1.0, 0.27) if wall_kind == "apical" else (0.15, 0.65)
    u = np.array([np.sin(angle), np.cos(angle)])
    v = np.array([np.cos(angle), -np.sin(angle)])
    # The RV apex sits left of the septum, a little below the LV apex; its axis diverges to the left.
    s_rv, d_rv = 0.15 * length, -(0.55 * half_width + wall + 0.02 * h)
    rv_apex = np.asarray(apex) + s_rv * u + d_rv * v
    return HeartParams(
        shape=(int(h), int(w)),
        apex=(float(apex[0]), float(apex[1])),
        angle=float(angle),
        length_ed=float(length),
        half_width_ed=float(half_width),
        wall_ed=float(wall),
        long_shortening=float(long_short),
        radial_shortening=float(radial_short),
        target_ef=float(target_ef),
        abnormality=abnormality,
        akinetic_wall=wall_kind,
        akinetic_range=wall_range,
        rv_apex=(float(rv_apex[0]), float(rv_apex[1])),
        rv_angle=float(angle - rng.uniform(0.22, 0.35)),
        rv_length=float(0.7 * length * rng.uniform(0.9, 1.1)),
        rv_half_width=float(0.8 * half_width * rng.uniform(0.9, 1.1)),
        la_radii=(float(0.24 * length * rng.uniform(0.9, 1.1)), float(0.85 * half_width * rng.uniform(0.9, 1.1))),
        ra_radii=(float(0.22 * length * rng.uniform(0.9, 1.1)), float(0.75 * half_width * rng.uniform(0.9, 1.1))),
        gain=float(rng.uniform(0.8, 1.25)),
        tissue=float(rng.uniform(0.22, 0.34)),
    )


def contraction_curve(phase: np.ndarray, systole_fraction: float = 0.36) -> np.ndarray:
    """Contraction ``c`` in ``[0, 1]`` over the cardiac phase (0 = end-diastole, ``systole_fraction`` = end-systole).

    Raised-cosine ejection then raised-cosine filling: monotone on both sides, so ED and ES are the only extrema.
    """
    phase = np.mod(np.asarray(phase, dtype=np.float64), 1.0)
    ts = float(systole_fraction)
    systole = 0.5 * (1.0 - np.cos(np.pi * phase / ts))
    diastole = 0.5 * (1.0 + np.cos(np.pi * (phase - ts) / (1.0 - ts)))
    return np.where(phase < ts, systole, diastole)


def _lv_axes(p: HeartParams, c: float) -> tuple[float, float, float]:
    length = p.length_ed * (1.0 - p.long_shortening * c)
    half_width = p.half_width_ed * (1.0 - p.radial_shortening * c)
    return length, half_width, p.wall_ed


def _akinetic_weights(p: HeartParams, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``m`` (1 = does not move) of the left (septal) and right (lateral) wall at long-axis position ``s``."""
    zero = np.zeros(np.shape(s), dtype=np.asarray(s).dtype)
    if p.akinetic_wall == "none":
        return zero, zero
    ramp = 0.1 * p.length_ed
    s0, s1 = (r * p.length_ed for r in p.akinetic_range)
    m = _smoothstep((s - s0) / ramp + 0.5) * _smoothstep((s1 - s) / ramp + 0.5)
    left = m if p.akinetic_wall in ("septal", "apical") else zero
    right = m if p.akinetic_wall in ("lateral", "apical") else zero
    return left, right


def lv_half_widths(
    p: HeartParams, s: np.ndarray, c: float, weights: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Endocardial half-widths (septal side, lateral side) at long-axis positions ``s`` (pixels from the apex)."""
    s = np.asarray(s)
    length, half_width, _ = _lv_axes(p, c)
    h_c = half_width * _shape_profile(s / length)
    h_ed = p.half_width_ed * _shape_profile(s / p.length_ed)
    m_left, m_right = weights if weights is not None else _akinetic_weights(p, s)
    inside = (s >= 0) & (s <= length)
    return np.where(inside, h_c + m_left * (h_ed - h_c), 0.0), np.where(inside, h_c + m_right * (h_ed - h_c), 0.0)


def _frame(p: HeartParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = p.angle
    return np.asarray(p.apex, dtype=np.float64), np.array([np.sin(a), np.cos(a)]), np.array([np.cos(a), -np.sin(a)])


def lv_tracing(p: HeartParams, c: float, num_chords: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EchoNet-style tracing ``(X1, Y1, X2, Y2)`` of the LV at contraction ``c``: ``num_chords + 1`` rows.

    Row 0 is the long axis from the endocardial apex (``X1, Y1``) to the mitral-plane midpoint (``X2, Y2``); rows
    ``1..num_chords`` are chords perpendicular to it at the disc mid-points ``s_i = (i - 1/2) L / N``, from the septal
    (``X1, Y1``) to the lateral (``X2, Y2``) endocardial boundary.
    """
    apex, u, v = _frame(p)
    length, _, _ = _lv_axes(p, c)
    s = (np.arange(1, num_chords + 1) - 0.5) / num_chords * length
    h_left, h_right = lv_half_widths(p, s, c)
    centre = apex[None, :] + s[:, None] * u[None, :]
    left = centre - h_left[:, None] * v[None, :]
    right = centre + h_right[:, None] * v[None, :]
    base = apex + length * u
    x1 = np.concatenate([[apex[0]], left[:, 0]])
    y1 = np.concatenate([[apex[1]], left[:, 1]])
    x2 = np.concatenate([[base[0]], right[:, 0]])
    y2 = np.concatenate([[base[1]], right[:, 1]])
    return x1, y1, x2, y2


def _local(xx: np.ndarray, yy: np.ndarray, apex, angle: float) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = xx - apex[0], yy - apex[1]
    sa, ca = np.sin(angle), np.cos(angle)
    return dx * sa + dy * ca, dx * ca - dy * sa


class _Scene:
    """Label and echogenicity maps of one frame (pixel centres at integer coordinates)."""

    def __init__(self, p: HeartParams, c: float, xx: np.ndarray, yy: np.ndarray) -> None:
        h = p.shape[0]
        length, _, wall = _lv_axes(p, c)
        s, d = _local(xx, yy, p.apex, p.angle)
        m_left, m_right = _akinetic_weights(p, s)
        h_left, h_right = lv_half_widths(p, s, c, (m_left, m_right))
        along = (s >= 0) & (s <= length)
        self.lv = along & (d >= -h_left) & (d <= h_right)
        # Myocardial thickening at systole, none where the wall is akinetic.
        t_left = wall * (1.0 + 0.4 * c * (1.0 - m_left))
        t_right = wall * (1.0 + 0.4 * c * (1.0 - m_right))
        cap = (s < 0) & (s >= -wall) & (np.abs(d) <= np.sqrt(np.maximum(wall**2 - s**2, 0.0)))
        self.myo = ((along & (d >= -h_left - t_left) & (d <= h_right + t_right)) | cap) & ~self.lv
        gap, wall_o = 0.012 * h, 0.022 * h
        # Atria fill while the ventricles empty; the atrioventricular plane moves with the LV base.
        la_a, la_b = p.la_radii[0] * (1 + 0.25 * c), p.la_radii[1] * (1 + 0.15 * c)
        rho_la = np.hypot((s - (length + gap + la_a)) / la_a, d / la_b)
        s_rv, d_rv = _local(xx, yy, p.rv_apex, p.rv_angle)
        rv_len, rv_w = p.rv_length * (1 - 0.12 * c), p.rv_half_width * (1 - 0.2 * c)
        rv_h = rv_w * _shape_profile(s_rv / rv_len)
        rv_along = (s_rv >= 0) & (s_rv <= rv_len)
        ra_a, ra_b = p.ra_radii[0] * (1 + 0.25 * c), p.ra_radii[1] * (1 + 0.15 * c)
        rho_ra = np.hypot((s_rv - (rv_len + gap + ra_a)) / ra_a, d_rv / ra_b)
        self.la = (rho_la <= 1.0) & ~self.lv & ~self.myo
        rv = rv_along & (np.abs(d_rv) <= rv_h)
        rv_wall = (s_rv >= -wall_o) & (s_rv <= rv_len) & (np.abs(d_rv) <= rv_h + wall_o) & ~rv
        ra = rho_ra <= 1.0
        atrial_wall = ((rho_la <= 1.0 + wall_o / la_b) & ~(rho_la <= 1.0)) | ((rho_ra <= 1.0 + wall_o / ra_b) & ~ra)
        self.blood = self.lv | self.la | rv | ra
        self.walls = rv_wall | atrial_wall
        self.s, self.d, self.m_left, self.m_right = s, d, m_left, m_right

    def labels(self) -> np.ndarray:
        out = np.zeros(self.lv.shape, dtype=np.uint8)
        out[self.la] = LABEL_LA
        out[self.myo] = LABEL_MYOCARDIUM
        out[self.lv] = LABEL_LV
        return out


def heart_labels(p: HeartParams, c: float) -> np.ndarray:
    """``H x W`` ``uint8`` labels at contraction ``c`` (CAMUS codes: 0 background, 1 LV, 2 myocardium, 3 LA)."""
    yy, xx = np.mgrid[0 : p.shape[0], 0 : p.shape[1]].astype(np.float64)
    return _Scene(p, c, xx, yy).labels()


class HeartRenderer:
    """Renders B-mode frames of one patient's heart.

    Image formation: echogenicity map (dark blood, bright myocardium, grey chamber walls and textured tissue, a
    bright near-field band) x Rayleigh speckle x depth attenuation ``exp(-0.8 r)`` x gain, a mild power-law
    compression to ``uint8``, and black outside a 75-degree fan with its apex at the top centre.

    Speckle is the magnitude of a complex scattering field that is persistent and moves with the heart: each frame
    samples the patient's fixed field at the pixel's end-diastolic (material) position, so the speckle pattern
    follows the contracting wall and motion can be tracked; 30 % of the field is drawn fresh every frame
    (decorrelation from out-of-plane motion and noise).

    Args:
        params: the patient.
        rng: the patient's generator (drawn from in a fixed order, so rendering is deterministic per seed).
        fresh_fraction: amplitude share of the per-frame fresh speckle.
    """

    def __init__(self, params: HeartParams, rng: np.random.Generator, fresh_fraction: float = 0.3) -> None:
        self.params = params
        self.rng = rng
        h, w = params.shape
        scale = h / 112.0
        self.sigma = (0.6 * scale, 1.1 * scale)  # axial, lateral speckle correlation (pixels)
        self.fan, radius = sector_geometry((h, w))
        self.attenuation = np.exp(-0.8 * radius) * (1.0 + 0.35 * np.exp(-radius / 0.05))  # + near-field clutter
        self.base = complex_speckle(rng, (h, w), self.sigma)
        # Fresh speckle comes from random windows of one larger field: as random as drawing a new field per frame
        # for any model, at a fraction of the cost (drawing Gaussian noise dominates the rendering time otherwise).
        self.margin = max(h, w) // 2
        self.fresh_bank = complex_speckle(rng, (h + self.margin, w + self.margin), self.sigma)
        self.texture = 1.0 + 0.25 * smooth_noise(rng, (h, w), 4.0 * scale)
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.fresh = float(fresh_fraction)

    def _material_coords(self, scene: _Scene, c: float) -> tuple[np.ndarray, np.ndarray]:
        """End-diastolic position of each pixel's tissue: undo the LV contraction near the heart, fading out."""
        p = self.params
        length, half_width, _ = _lv_axes(p, c)
        s, d = scene.s, scene.d
        rho = np.hypot((s - 0.5 * p.length_ed) / (0.5 * p.length_ed), d / (p.half_width_ed + p.wall_ed))
        weight = np.clip(2.2 - rho, 0.0, 1.0)
        m_side = np.where(d < 0, scene.m_left, scene.m_right)
        s_mat = s * (1.0 + (p.length_ed / length - 1.0) * weight)
        d_mat = d * (1.0 + (p.half_width_ed / half_width - 1.0) * weight * (1.0 - m_side))
        apex, u, v = _frame(p)
        x = apex[0] + s_mat * u[0] + d_mat * v[0]
        y = apex[1] + s_mat * u[1] + d_mat * v[1]
        return x.astype(np.float32), y.astype(np.float32)

    def render(self, c: float) -> tuple[np.ndarray, np.ndarray]:
        """One frame at contraction ``c``: ``(image H x W uint8, labels H x W uint8)``; ``labels == 1`` is the LV."""
        cv2 = _cv2()
        p = self.params
        scene = _Scene(p, c, self.xx, self.yy)
        echo = (p.tissue * self.texture).astype(np.float32)
        echo[scene.walls] = _E_WALL
        echo[scene.blood] = _E_BLOOD
        echo[scene.myo] = _E_MYO * self.texture[scene.myo]
        echo[scene.lv] = _E_BLOOD
        echo = _blur(echo, (0.6, 0.6))  # structures have soft edges at the imaging resolution
        mx, my = self._material_coords(scene, c)
        field = np.stack([cv2.remap(f, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for f in self.base])
        oy, ox = self.rng.integers(0, self.margin + 1, 2)
        fresh = self.fresh_bank[:, oy : oy + p.shape[0], ox : ox + p.shape[1]]
        field = np.float32(np.sqrt(1.0 - self.fresh**2)) * field + np.float32(self.fresh) * fresh
        intensity = p.gain * self.attenuation * echo * speckle_amplitude(field)
        image = 255.0 * np.clip(intensity, 0.0, 1.0) ** 0.85
        image[~self.fan] = 0.0
        return np.rint(image).astype(np.uint8), scene.labels()
