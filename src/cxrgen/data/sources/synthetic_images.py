"""The image half of the synthetic source: chest-radiograph-like drawings that show a study's findings.

Geometry is computed in units of the image width (x to the right, y down), mostly on a half-resolution
grid with numpy (smooth anatomy, no per-pixel Python), then upsampled; thin metal devices are drawn at
full resolution with Pillow. Frontal views are PA: the patient's left is the image right (the heart
bulges to the image right). Lateral views face image left: anterior is left, the spine is right.

A study's anatomy and finding geometry (`sample_study`) are shared by all its images; each image adds
its own jitter (position, rotation, exposure, noise), so two frontals of one study differ slightly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEVERITY_CTR = {"mild": (0.55, 0.58), "moderate": (0.59, 0.64), "severe": (0.65, 0.71)}
NORMAL_CTR = (0.39, 0.47)
EFFUSION_HEIGHT = {"small": (0.08, 0.11), "moderate": (0.14, 0.19), "large": (0.24, 0.32)}
PNEUMOTHORAX_GAP = {"small": (0.03, 0.04), "moderate": (0.05, 0.065), "large": (0.08, 0.10)}
LESION_RADIUS = {"opacity": (0.07, 0.095), "consolidation": (0.07, 0.095), "nodule": (0.015, 0.022)}
ZONE_FRACTION = {"upper": (0.18, 0.28), "mid": (0.45, 0.55), "lower": (0.70, 0.78)}


def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


# ----------------------------------------------------------------------------- study geometry


def sample_study(findings: list[dict], rng: np.random.Generator) -> dict:
    """Patient habitus and the geometry of each finding, shared by every image of the study.

    Lengths are in units of the patient's scale `s` (about the image width); positions across the
    chest are distances `p` out from the midline, heights fractions of the apex-to-diaphragm span.
    """
    ctr = _u(rng, NORMAL_CTR)
    for f in findings:
        if f["finding"] == "cardiomegaly":
            ctr = _u(rng, SEVERITY_CTR[f["severity"]])
    study = {
        "scale": _u(rng, (0.86, 1.04)),
        "fat": _u(rng, (0.05, 0.12)),
        "tissue": _u(rng, (0.50, 0.60)),
        "lung_depth": _u(rng, (0.32, 0.42)),
        "ctr": ctr,
        "dome_height": _u(rng, (0.11, 0.15)),
        "right_dome_up": _u(rng, (0.0, 0.02)),
        "spine_levels": rng.random(16).tolist(),
        "gastric_bubble": bool(rng.random() < 0.7),
        "breast": _u(rng, (0.0, 0.25)) if rng.random() < 0.4 else 0.0,
        "findings": [],
    }
    for f in findings:
        kind = f["finding"]
        geo: dict = {}
        if kind in ("opacity", "consolidation", "nodule"):
            geo["zone_fraction"] = _u(rng, ZONE_FRACTION[f["zone"]])
            geo["p"] = _u(rng, (0.17, 0.25) if kind != "nodule" else (0.13, 0.27))
            geo["lateral_jitter"] = _u(rng, (-0.04, 0.04))
            geo["radius"] = _u(rng, LESION_RADIUS[kind])
            geo["texture_seed"] = int(rng.integers(2**31))
        elif kind == "atelectasis":
            geo["p0"], geo["p1"] = _u(rng, (0.07, 0.11)), _u(rng, (0.22, 0.27))
            geo["tilt"] = _u(rng, (-0.03, 0.02))
            geo["above"] = _u(rng, (0.025, 0.05))
            geo["thickness"] = _u(rng, (0.009, 0.013))
        elif kind == "pleural_effusion":
            geo["height"] = _u(rng, EFFUSION_HEIGHT[f["severity"]])
        elif kind == "pneumothorax":
            geo["gap"] = _u(rng, PNEUMOTHORAX_GAP[f["severity"]])
        elif kind == "edema":
            geo["amount"] = _u(rng, (0.28, 0.38) if f["kind"] == "interstitial" else (0.55, 0.7))
            geo["kerley"] = rng.uniform(0, 1, size=(2, 6, 2)).tolist()
        elif kind == "support_device":
            geo["jitter"] = rng.uniform(-1, 1, size=8).tolist()
            geo["count"] = int(rng.integers(4, 7))
        elif kind == "degenerative_spine":
            geo["spur"] = _u(rng, (0.010, 0.014) if f["severity"] == "mild" else (0.018, 0.026))
            geo["levels"] = 0.45 if f["severity"] == "mild" else 0.85
        study["findings"].append((f, geo))
    return study


# ----------------------------------------------------------------------------- drawing helpers


class _Canvas:
    """The render grid: anatomical coordinates x, y (width units) of each render pixel.

    The film is rotated by `angle` degrees about its centre: the grid holds, for every pixel, the
    anatomical point it shows, and `to_film` maps anatomical points to full-size pixels (for devices).
    """

    def __init__(self, width: int, height: int, angle: float):
        self.W, self.H = width, height
        self.rw = max(64, width // 2)
        self.rh = max(32, round(height * self.rw / width))
        self.aspect = height / width
        X = ((np.arange(self.rw, dtype=np.float32) + 0.5) / self.rw)[None, :]
        Y = ((np.arange(self.rh, dtype=np.float32) + 0.5) / self.rw)[:, None]
        a = math.radians(angle)
        self.cos, self.sin = math.cos(a), math.sin(a)
        self.center = (0.5, self.aspect / 2)
        dx, dy = X - self.center[0], Y - self.center[1]
        self.x = (self.center[0] + self.cos * dx + self.sin * dy).astype(np.float32)
        self.y = (self.center[1] - self.sin * dx + self.cos * dy).astype(np.float32)

    def blank(self) -> np.ndarray:
        return np.zeros((self.rh, self.rw), dtype=np.float32)

    def to_film(self, px: float, py: float) -> tuple[float, float]:
        dx, dy = px - self.center[0], py - self.center[1]
        fx = self.center[0] + self.cos * dx - self.sin * dy
        fy = self.center[1] + self.sin * dx + self.cos * dy
        return fx * self.W, fy * self.W


def _soften(a: np.ndarray) -> np.ndarray:
    """A 3x3 box blur (edges kept): takes the drawn look off sharp mask borders."""
    p = np.pad(a, 1, mode="edge")
    rows = (p[:-2] + p[1:-1] + p[2:]) / 3
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 3


def _ramp(d, width: float):
    """1 inside (d < 0), 0 outside, linear over `width` around the edge."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _ellipse_d(x, y, cx, cy, ax, ay, power: float = 2.0):
    """Approximate signed distance to a (super)ellipse, negative inside."""
    r = (np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power) ** (1.0 / power)
    return (r - 1.0) * min(ax, ay)


def _segment_d(x, y, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return np.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2)


def _smooth_noise(rng: np.random.Generator, cells: int, c: _Canvas) -> np.ndarray:
    """Unit-variance smooth noise with about `cells` features across the width."""
    rows = max(2, round(cells * c.rh / c.rw))
    small = rng.standard_normal((rows, cells)).astype(np.float32)
    out = np.asarray(Image.fromarray(small).resize((c.rw, c.rh), Image.BICUBIC), dtype=np.float32)
    return out / (out.std() + 1e-6)


def _ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin branching lines along the zero crossings of smooth noise."""
    return np.clip(1.0 - np.abs(noise) / width, 0.0, 1.0) ** 2


def _bowel_gas(rng: np.random.Generator, c: _Canvas) -> np.ndarray:
    """Irregular dark pockets (0..1) for the abdomen under the diaphragm."""
    return np.clip(_smooth_noise(rng, 14, c) - 1.0, 0.0, 1.0)


def _radial_vessels(rng: np.random.Generator, x, y, hila, cx: float, s: float) -> np.ndarray:
    """Vessel-like streaks radiating from each hilum and thinning towards the periphery.

    Smooth noise sampled in polar coordinates around the hilum varies fast with the angle and slowly
    with the radius, so its zero crossings run outwards like vessels.
    """
    full_shape = x.shape
    x, y = x[::2, ::2], y[::2, ::2]  # smooth enough to compute on a coarser grid
    hx = np.where(x < cx, hila[0][0], hila[1][0])
    hy = np.where(x < cx, hila[0][1], hila[1][1])
    dx, dy = x - hx, y - hy
    radius = np.sqrt(dx * dx + dy * dy) / s
    n_angle, n_radius = 56, 10
    grid = rng.standard_normal((n_angle, n_radius)).astype(np.float32)
    u = (np.arctan2(dy, dx) / (2 * math.pi) + 0.5) * n_angle
    v = np.clip(radius / 0.6, 0, 1) * (n_radius - 1)
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - u0, v - v0
    u0 %= n_angle
    u1, v1 = (u0 + 1) % n_angle, np.minimum(v0 + 1, n_radius - 1)
    value = ((grid[u0, v0] * (1 - fu) + grid[u1, v0] * fu) * (1 - fv)
             + (grid[u0, v1] * (1 - fu) + grid[u1, v1] * fu) * fv)
    out = (_ridges(value, 0.35) * np.exp(-radius / 0.28)).astype(np.float32)
    return np.asarray(Image.fromarray(out).resize(full_shape[::-1], Image.BILINEAR), dtype=np.float32)


def _bone_layer(c: _Canvas, strokes: list[tuple[list[tuple[float, float]], float, int]]) -> np.ndarray:
    """Bones as thick polylines on the film (points in anatomical width units), softly blurred."""
    layer = Image.new("L", (c.rw, c.rh), 0)
    draw = ImageDraw.Draw(layer)
    factor = c.rw / c.W
    for points, width, value in strokes:
        pts = [tuple(v * factor for v in c.to_film(px, py)) for px, py in points]
        draw.line(pts, fill=value, width=max(1, round(width * c.rw)))
    layer = layer.filter(ImageFilter.GaussianBlur(1.0))
    return np.asarray(layer, dtype=np.float32) / 255.0


class _DeviceLayer:
    """Metal drawn at full resolution (thin wires need it); coordinates in anatomical width units."""

    def __init__(self, c: _Canvas):
        self.c = c
        self.image = Image.new("L", (c.W, c.H), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.used = False

    def _px(self, points):
        return [self.c.to_film(px, py) for px, py in points]

    def _width(self, width: float) -> int:
        return max(1, round(width * self.c.W))

    def line(self, points, width: float, value: int = 255):
        self.used = True
        self.draw.line(self._px(points), fill=value, width=self._width(width), joint="curve")

    def box(self, x0, y0, x1, y1, value: int = 255):
        self.used = True
        self.draw.polygon(self._px([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), fill=value)

    def loop(self, cx, cy, rx, ry, width: float, value: int = 255):
        self.used = True
        ts = np.linspace(0, 2 * math.pi, 17)
        self.line([(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts], width, value)

    def alpha(self) -> np.ndarray | None:
        if not self.used:
            return None
        return np.asarray(self.image.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255.0


_CURVE_T: dict[int, np.ndarray] = {}


def _curve(points, n: int = 16):
    """A smooth polyline through a few control points (Catmull-Rom), for leads, lines and ribs."""
    pts = np.asarray(points, dtype=float)
    padded = np.vstack([pts[0], pts, pts[-1]])
    if n not in _CURVE_T:
        _CURVE_T[n] = np.linspace(0, 1, n, endpoint=False)[:, None]
    t = _CURVE_T[n]
    pieces = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        pieces.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                             + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    pieces.append(pts[-1:])
    return [tuple(p) for p in np.vstack(pieces).tolist()]


def _dome_profile(p, peak: float, lateral: float):
    """Height of a hemidiaphragm (1 at its peak) against the distance p from the midline.

    It falls steadily from the peak to 0 at the lateral chest wall (the sharp costophrenic angle)
    and a little towards the midline (the cardiophrenic angle).
    """
    out = 1 - np.clip((p - peak) / (lateral - peak), 0, 1) ** 2
    return out - 0.45 * np.clip((peak - p) / peak, 0, 1) ** 2


def _vertebra_phase(y, top: float, period: float):
    """Level index and position within the level (0..1) along the spine."""
    level = np.floor((y - top) / period)
    return level, (y - top) / period - level


def _spine_flags(levels: list[float], level, share: float):
    """Which vertebral levels carry spurs: a per-study random pattern looked up per row."""
    table = (np.asarray(levels, dtype=np.float32) < share).astype(np.float32)
    return table[np.clip(level, 0, len(table) - 1).astype(int)]


def _blob(kind: str, geo: dict, x, y, px: float, py: float, r: float, c: _Canvas, seed_offset: int = 0):
    """How much air a focal lesion removes (0..1) around (px, py)."""
    d = np.sqrt((x - px) ** 2 + (y - py) ** 2) / r
    if kind == "nodule":  # small, round, sharp
        return 0.9 * _ramp(d - 1, 0.35)
    texture = _smooth_noise(np.random.default_rng(geo["texture_seed"] + seed_offset), 24, c)
    if kind == "opacity":  # hazy, mottled, soft-edged
        return 0.75 * np.exp(-(d ** 2)) * np.clip(0.75 + 0.25 * texture, 0, 1)
    return 0.9 * _ramp(d - (1 + 0.2 * texture), 0.3)  # consolidation: dense, irregular margin


# ----------------------------------------------------------------------------- frontal view


def _frontal(c: _Canvas, st: dict, jit: dict, rng: np.random.Generator, devices: _DeviceLayer) -> np.ndarray:
    x, y = c.x, c.y
    s = st["scale"] * jit["zoom"] * min(1.0, c.aspect / 0.92)
    cx = 0.5 + jit["du"]
    yc = c.aspect / 2 + jit["dv"]
    apex, base = yc - 0.37 * s, yc + 0.23 * s
    T = 0.39 * s  # inner half-width of the rib cage at its widest

    # Torso: neck widening into the shoulders, arms beside the chest, thinner tissue at the flanks.
    half_body = T + st["fat"] * s
    t = np.clip((y - (apex - 0.17 * s)) / (0.14 * s), 0, 1)
    t = t * t * (3 - 2 * t)
    half = 0.09 * s + (half_body + 0.05 * s - 0.09 * s) * t
    body = _ramp(np.abs(x - cx) - half, 0.015)
    arm_in = half_body + 0.035 * s
    arms = _ramp(np.abs(np.abs(x - cx) - arm_in - 0.06 * s) - 0.06 * s, 0.02) * (y > apex)
    body = np.maximum(body, 0.9 * arms)
    img = body * st["tissue"] * (1.0 - 0.25 * np.clip(np.abs(x - cx) / (half + 0.1 * s), 0, 1) ** 4)

    # Lungs: one rounded superellipse per side, cut below by its diaphragm dome.
    dh = st["dome_height"] * s
    sides = {}
    lungs = c.blank()
    below_domes = c.blank()
    for sign, side in ((-1, "right"), (1, "left")):
        p = (x - cx) * sign  # distance out from the midline on this side
        base_s = base - (st["right_dome_up"] * s if side == "right" else 0.0)
        shape = _ramp(_ellipse_d(p, y, 0.21 * s, base_s, 0.18 * s, base_s - apex, 2.2), 0.006) * (p > 0)
        dome = base_s - dh * _dome_profile(p, 0.13 * s, T)
        above = _ramp(y - dome, 0.006)
        lungs += shape * above
        below_domes += (1 - above) * (p > 0) * _ramp(p - T, 0.04 * s)
        sides[side] = {"sign": sign, "p": p, "base": base_s, "shape": shape, "dome": dome}

    # Mediastinum (aortic knob on the patient's left), the heart (apex to the patient's left) and
    # the abdomen under the domes are all soft-tissue dense.
    med_half = 0.06 * s + 0.045 * s * np.clip((y - apex - 0.1 * s) / (0.35 * s), 0, 1) ** 2
    med = _ramp(np.abs(x - cx - 0.004 * s) - med_half, 0.01)
    med = np.maximum(med, _ramp(_ellipse_d(x, y, cx + 0.06 * s, apex + 0.19 * s, 0.036 * s, 0.034 * s), 0.008))
    heart_w = st["ctr"] * 2 * T
    hx, hy = cx - 0.36 * heart_w + heart_w / 2, base - 0.18 * s  # widest part above the domes
    tilt = math.radians(28)
    u = (x - hx) * math.cos(tilt) + (y - hy) * math.sin(tilt)
    v = -(x - hx) * math.sin(tilt) + (y - hy) * math.cos(tilt)
    long_ax, short_ax = 1.0, 0.92  # axis ratio; scaled below so the horizontal extent is heart_w
    k = (heart_w / 2) / math.sqrt((long_ax * math.cos(tilt)) ** 2 + (short_ax * math.sin(tilt)) ** 2)
    heart = _ramp(_ellipse_d(u, v, 0.0, 0.0, long_ax * k, short_ax * k), 0.008)
    solid = np.maximum(np.maximum(med, heart), np.clip(below_domes, 0, 1) * body)
    img += 0.09 * solid
    img -= 0.1 * _bowel_gas(rng, c) * np.clip(below_domes, 0, 1) * np.clip((y - base - 0.05 * s) / (0.1 * s), 0, 1)
    if st["gastric_bubble"]:
        bubble = _ramp(_ellipse_d(x, y, cx + 0.2 * s, sides["left"]["base"] - dh + 0.06 * s, 0.06 * s, 0.03 * s), 0.01)
        img -= 0.12 * bubble * np.clip(below_domes, 0, 1)

    # Aerated lung with vessels radiating from the hila; a soft-tissue veil over the bases.
    hila = [(cx - 0.10 * s, apex + 0.31 * s), (cx + 0.11 * s, apex + 0.32 * s)]
    vessels = _radial_vessels(rng, x, y, hila, cx, s)
    fine = _ridges(_smooth_noise(rng, 40, c), 0.3)
    near_hila = sum(np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (0.09 * s) ** 2) for hx, hy in hila)
    lung_region = np.clip(lungs, 0, 1) * (1 - med) * (1 - 0.85 * heart)  # some lung seen through the heart
    air = lung_region * (1 - np.clip(0.3 * vessels + 0.06 * fine + 0.25 * np.clip(near_hila, 0, 1), 0, 0.8))
    air = air * (1 - st["breast"] * np.clip((y - (base - 0.3 * s)) / (0.25 * s), 0, 1))

    air = _frontal_findings(c, st, s, cx, apex, sides, air, rng, T)
    img -= st["lung_depth"] * air

    # Bones: spine behind the mediastinum, posterior and (fainter) anterior ribs, clavicles.
    period = 0.056 * s
    level, phase = _vertebra_phase(y, apex - 0.1 * s, period)
    column = _ramp(np.abs(x - cx) - 0.036 * s, 0.006) * (y > apex - 0.25 * s)
    img += column * (0.015 + 0.02 * (phase < 0.8))
    trachea = _ramp(np.abs(x - cx - 0.003 * s) - 0.014 * s, 0.006) * _ramp(y - (apex + 0.2 * s), 0.03 * s)
    img -= 0.06 * trachea * body
    strokes = []
    for sign in (-1, 1):
        for k_rib in range(10):
            y0 = apex - 0.01 * s + k_rib * 0.056 * s
            post = [(cx + sign * 0.035 * s, y0), (cx + sign * 0.12 * s, y0 - 0.03 * s),
                    (cx + sign * 0.26 * s, y0 - 0.005 * s), (cx + sign * (T - 0.01 * s), y0 + 0.07 * s),
                    (cx + sign * (T + 0.015 * s), y0 + 0.14 * s)]
            strokes.append((_curve(post, 6), 0.021 * s, 150))
            ant = [(cx + sign * (T + 0.01 * s), y0 + 0.12 * s), (cx + sign * 0.27 * s, y0 + 0.13 * s),
                   (cx + sign * 0.12 * s, y0 + 0.22 * s)]
            strokes.append((_curve(ant, 6), 0.018 * s, 110))
        clav = [(cx + sign * 0.035 * s, apex + 0.05 * s), (cx + sign * 0.16 * s, apex + 0.02 * s),
                (cx + sign * 0.34 * s, apex - 0.04 * s)]
        strokes.append((_curve(clav, 6), 0.028 * s, 255))
    bones = _bone_layer(c, strokes)
    img += bones * (0.06 + 0.08 * lung_region) * body

    for f, geo in st["findings"]:
        if f["finding"] == "degenerative_spine":
            flags = _spine_flags(st["spine_levels"], level, geo["levels"])
            near_disc = np.abs(phase - 0.9) * period  # distance to the disc level
            reach = np.abs(x - cx) - 0.036 * s
            spur = np.clip(1 - reach / (geo["spur"] * s) - near_disc / (0.014 * s), 0, 1) * (reach > -0.004 * s)
            plates = column * ((np.abs(phase - 0.8) < 0.05) + (phase < 0.05))
            img += (0.22 * spur + 0.08 * plates) * flags * (y > apex + 0.2 * s)
        elif f["finding"] == "support_device":
            _frontal_device(devices, f["device"], geo, s, cx, apex, base)
    img += jit["background"] * (1 - body)
    return img


def _frontal_findings(c, st, s, cx, apex, sides, air, rng, T):
    x, y = c.x, c.y
    for f, geo in st["findings"]:
        kind = f["finding"]
        targets = ["left", "right"] if f.get("side") == "bilateral" else [f.get("side")]
        if kind == "pneumothorax":  # lung edge pulled away from the apex: dark, marking-free rim
            sd = sides[f["side"]]
            gap = geo["gap"] * s
            collapsed = _ellipse_d(sd["p"], y, 0.21 * s - 0.3 * gap, sd["base"], 0.18 * s - gap * 0.7,
                                   sd["base"] - apex - gap, 2.2)
            apical = np.clip((apex + 0.5 * (sd["base"] - apex) - y) / (0.12 * s), 0, 1)
            rim = sd["shape"] * (collapsed > 0) * apical
            line = np.clip(1 - np.abs(collapsed) / (0.0045 * s), 0, 1) * sd["shape"] * apical
            air = air * (1 - rim) + 1.15 * rim * (1 - line)
            air = air * (1 - 0.75 * line)
        elif kind == "edema":  # bilateral perihilar haze ("bat wings")
            haze = sum(np.exp(-((x - hx) ** 2 / (0.14 * s) ** 2 + (y - hy) ** 2 / (0.18 * s) ** 2))
                       for hx, hy in ((cx - 0.12 * s, apex + 0.32 * s), (cx + 0.13 * s, apex + 0.33 * s)))
            haze = np.clip(haze, 0, 1)
            air = air * (1 - geo["amount"] * haze)
            if f["kind"] == "interstitial":  # reticular texture and Kerley B lines at the bases
                air = air * (1 - 0.3 * _ridges(_smooth_noise(rng, 60, c), 0.3))
                lines = c.blank()
                for side_index, side in enumerate(("right", "left")):
                    sd = sides[side]
                    for _, v in geo["kerley"][side_index]:
                        yy = sd["base"] - (0.03 + 0.12 * v) * s
                        seg = _segment_d(sd["p"], y, T - 0.05 * s, yy, T - 0.01 * s, yy)
                        lines = np.maximum(lines, _ramp(seg - 0.002 * s, 0.004))
                air = air * (1 - 0.7 * lines)
            else:
                air = air * (1 - 0.25 * haze * np.clip(_smooth_noise(rng, 10, c) + 1, 0, 2) / 2)
        elif kind in ("opacity", "consolidation", "nodule"):
            sd = sides[f["side"]]
            p = geo["p"]
            if f["side"] == "left" and f["zone"] != "upper":  # not entirely behind the heart
                p = min(max(p, 0.5 * st["ctr"] + 0.5 * geo["radius"]), 0.37 - 0.5 * geo["radius"])
            px = cx + sd["sign"] * p * s
            py = apex + geo["zone_fraction"] * (sd["base"] - apex)
            air = air * (1 - _blob(kind, geo, x, y, px, py, geo["radius"] * s, c))
        elif kind == "atelectasis":  # a plate-like band just above the dome
            for side in targets:
                sd = sides[side]
                yy = sd["base"] - st["dome_height"] * s * 0.85 - geo["above"] * s
                p0, p1 = geo["p0"], geo["p1"]
                if side == "left":  # start beside the heart, not behind it
                    shift = max(0.0, 0.5 * st["ctr"] + 0.01 - p0)
                    p0, p1 = p0 + shift, min(p1 + shift, 0.31)  # clear of the costophrenic angle
                d = _segment_d(sd["p"], y, p0 * s, yy + geo["tilt"] * s, p1 * s, yy - geo["tilt"] * s)
                air = air * (1 - 0.9 * _ramp(d - geo["thickness"] * s, 0.005))
        elif kind == "pleural_effusion":  # fluid in the costophrenic angle, meniscus rising laterally
            for side in targets:
                sd = sides[side]
                h = geo["height"] * s
                lateral = np.clip((sd["p"] - 0.04 * s) / (T - 0.04 * s), 0, 1)
                meniscus = sd["base"] - h * (0.15 + 0.85 * lateral ** 3)
                fluid = _ramp(meniscus - y, 0.03 * s) * sd["shape"]
                air = air * (1 - fluid)
    return air


def _frontal_device(dev: _DeviceLayer, device: str, geo: dict, s, cx, apex, base):
    j = geo["jitter"]
    if device == "pacemaker":  # generator below the left clavicle (image right), lead into the RV
        bx, by = cx + (0.27 + 0.02 * j[0]) * s, apex + (0.07 + 0.02 * j[1]) * s
        dev.box(bx - 0.045 * s, by - 0.03 * s, bx + 0.045 * s, by + 0.03 * s, 235)
        lead = [(bx - 0.03 * s, by), (cx + 0.08 * s, apex + 0.03 * s), (cx - 0.03 * s, apex + 0.2 * s),
                (cx - 0.01 * s, base - 0.16 * s), (cx + (0.1 + 0.02 * j[2]) * s, base - 0.06 * s)]
        dev.line(_curve(lead), 0.005 * s, 255)
    elif device == "endotracheal_tube":  # down the midline, tip above the carina
        tip = apex + (0.14 + 0.02 * j[0]) * s
        for offset in (-0.012, 0.012):
            dev.line([(cx + offset * s, apex - 0.5 * s), (cx + offset * s, tip)], 0.004 * s, 200)
        dev.line([(cx, apex - 0.5 * s), (cx, tip)], 0.003 * s, 255)
    elif device == "central_line":  # right jugular/subclavian (image left) into the SVC
        line = [(cx - (0.25 + 0.02 * j[0]) * s, apex - 0.06 * s), (cx - 0.09 * s, apex + 0.05 * s),
                (cx - 0.035 * s, apex + 0.14 * s), (cx - 0.03 * s, apex + (0.26 + 0.02 * j[1]) * s)]
        dev.line(_curve(line), 0.004 * s, 255)
    elif device == "sternotomy_wires":  # twisted loops down the midline over the mediastinum
        n = geo["count"]
        for k in range(n):
            wy = apex + (0.15 + 0.28 * k / max(1, n - 1)) * s
            wx = cx + 0.01 * s + 0.006 * s * j[k % 8]
            dev.loop(wx, wy, 0.016 * s, 0.009 * s, 0.004 * s, 255)
            dev.line([(wx, wy - 0.009 * s), (wx, wy + 0.016 * s)], 0.004 * s, 255)


# ----------------------------------------------------------------------------- lateral view


def _lateral(c: _Canvas, st: dict, jit: dict, rng: np.random.Generator, devices: _DeviceLayer) -> np.ndarray:
    x, y = c.x, c.y
    s = st["scale"] * jit["zoom"] * min(1.0, c.aspect / 0.92)
    cx = 0.5 + jit["du"]
    yc = c.aspect / 2 + jit["dv"]
    apex, base = yc - 0.33 * s, yc + 0.20 * s

    body = _ramp(_ellipse_d(x, y, cx + 0.03 * s, yc + 0.12 * s, 0.42 * s + st["fat"] * s * 0.5, 0.8 * s, 3.0), 0.015)
    img = body * st["tissue"] * 1.03
    # Raised arms over the upper anterior chest.
    arms = _ramp(_segment_d(x, y, cx - 0.45 * s, apex - 0.25 * s, cx - 0.05 * s, apex + 0.12 * s) - 0.09 * s, 0.06 * s)
    img += 0.07 * arms

    lung_ax = 0.30 * s
    shape = _ramp(_ellipse_d(x, y, cx - 0.03 * s, base + 0.02 * s, lung_ax, base + 0.02 * s - apex, 2.6), 0.006)
    x_top, x_post, x_ant = cx - 0.13 * s, cx + 0.27 * s, cx - 0.33 * s

    def dome_at(xx):
        return (base - 0.07 * s + 0.16 * s * np.clip((xx - x_top) / (x_post - x_top), 0, 1) ** 2
                + 0.05 * s * np.clip((x_top - xx) / (x_top - x_ant), 0, 1) ** 2)

    dome = dome_at(x)
    above = _ramp(y - dome, 0.006)
    lungs = shape * above
    img += 0.08 * body * (1 - above)

    k = st["ctr"] / 0.45
    heart_ax, heart_ay = 0.15 * s * k, 0.14 * s * math.sqrt(k)
    hx, hy, tilt = x_ant + 0.03 * s + heart_ax * 0.95, base - 0.07 * s, math.radians(-20)
    u = (x - hx) * math.cos(tilt) + (y - hy) * math.sin(tilt)
    v = -(x - hx) * math.sin(tilt) + (y - hy) * math.cos(tilt)
    heart = _ramp(_ellipse_d(u, v, 0.0, 0.0, heart_ax, heart_ay), 0.02)
    img += 0.04 * heart

    hilum = (cx + 0.01 * s, apex + 0.30 * s)
    near_hilum = np.exp(-((x - hilum[0]) ** 2 + (y - hilum[1]) ** 2) / (0.16 * s) ** 2)
    vessels = _radial_vessels(rng, x, y, [hilum, hilum], cx, s)
    fine = _ridges(_smooth_noise(rng, 40, c), 0.3)
    air = lungs * (1 - 0.8 * heart) * (1 - np.clip(0.5 * vessels + 0.1 * fine + 0.4 * near_hilum, 0, 0.85))
    air = air * (1 - 0.35 * arms)

    for f, geo in st["findings"]:
        kind = f["finding"]
        if kind == "pleural_effusion":  # fills the posterior costophrenic sulcus with a meniscus
            h = geo["height"] * s * (1.3 if f["side"] == "bilateral" else 1.0)
            wall = np.clip((x - (x_post - 0.2 * s)) / (0.2 * s), 0, 1) ** 2
            level = float(dome_at(x_post)) - h - 0.5 * h * wall  # flat, rising along the back wall
            fluid = _ramp(level - y, 0.025 * s) * shape * (x > x_top)
            air = air * (1 - fluid)
        elif kind in ("opacity", "consolidation", "nodule"):
            zone_x = {"upper": cx - 0.02 * s, "mid": cx - 0.10 * s, "lower": cx + 0.13 * s}[f["zone"]]
            px = zone_x + geo["lateral_jitter"] * s
            py = apex + geo["zone_fraction"] * (base - apex)
            air = air * (1 - _blob(kind, geo, x, y, px, py, geo["radius"] * s, c, seed_offset=1))
        elif kind == "atelectasis":  # a plate just above the posterior dome
            x0, x1 = cx + 0.0 * s, cx + 0.18 * s
            d = _segment_d(x, y, x0, float(dome_at(x0)) - geo["above"] * s, x1, float(dome_at(x1)) - geo["above"] * s)
            air = air * (1 - 0.85 * _ramp(d - geo["thickness"] * s, 0.005))
        elif kind == "edema":
            haze = np.exp(-((x - hilum[0]) ** 2 + (y - hilum[1]) ** 2) / (0.22 * s) ** 2)
            air = air * (1 - 0.9 * geo["amount"] * haze)
    img -= 0.9 * st["lung_depth"] * air

    # Trachea, sternum and the vertebral column at the back (image right).
    trachea = _ramp(_segment_d(x, y, cx - 0.04 * s, apex - 0.2 * s, cx + 0.01 * s, apex + 0.25 * s) - 0.016 * s, 0.006)
    img -= 0.07 * trachea * body
    sternum = _ramp(np.abs(x - (x_ant - 0.005 * s)) - 0.008 * s, 0.004) * (y > apex + 0.08 * s) * (y < base - 0.18 * s)
    img += 0.06 * sternum
    period = 0.062 * s
    level, phase = _vertebra_phase(y, apex - 0.2 * s, period)
    spine_front = cx + 0.28 * s + 0.03 * s * (1 - ((y - (apex + 0.3 * s)) / (0.45 * s)) ** 2)
    depth = x - spine_front
    degenerative = [geo for f, geo in st["findings"] if f["finding"] == "degenerative_spine"]
    disc = 0.2 - (0.07 * degenerative[0]["levels"] if degenerative else 0.0)  # narrowed disc spaces
    in_column = _ramp(np.abs(depth - 0.042 * s) - 0.042 * s, 0.005)
    bodies = in_column * (phase < 1 - disc)
    posterior_elements = _ramp(np.abs(depth - 0.125 * s) - 0.035 * s, 0.015)
    img += 0.09 * bodies + 0.04 * in_column + 0.05 * posterior_elements
    for geo in degenerative:
        flags = _spine_flags(st["spine_levels"], level, geo["levels"])
        near_disc = np.abs(phase - (1 - disc / 2)) * period
        spur = np.clip(1 - (-depth) / (geo["spur"] * s) - near_disc / (0.016 * s), 0, 1) * (depth < 0.004 * s)
        plates = in_column * ((np.abs(phase - (1 - disc)) < 0.05) + (phase < 0.05))
        img += (0.26 * spur + 0.12 * plates) * flags * (y > apex) * (y < base + 0.05 * s)

    for f, geo in st["findings"]:
        if f["finding"] == "support_device":
            _lateral_device(devices, f["device"], geo, s, cx, apex, base, x_ant)
    img += jit["background"] * (1 - body)
    return img


def _lateral_device(dev: _DeviceLayer, device: str, geo: dict, s, cx, apex, base, x_ant):
    j = geo["jitter"]
    if device == "pacemaker":  # generator on the anterior chest wall, lead into the RV (anterior)
        bx, by = x_ant + (0.03 + 0.01 * j[0]) * s, apex + (0.08 + 0.02 * j[1]) * s
        dev.box(bx - 0.025 * s, by - 0.035 * s, bx + 0.025 * s, by + 0.035 * s, 235)
        lead = [(bx + 0.02 * s, by), (cx - 0.08 * s, apex + 0.06 * s), (cx + 0.0 * s, apex + 0.22 * s),
                (cx - 0.08 * s, base - 0.12 * s), (x_ant + 0.12 * s, base - 0.05 * s)]
        dev.line(_curve(lead), 0.005 * s, 255)
    elif device == "endotracheal_tube":
        tip = apex + (0.14 + 0.02 * j[0]) * s
        for offset in (-0.01, 0.01):
            dev.line([(cx - 0.05 * s + offset * s, apex - 0.5 * s), (cx + offset * s, tip)], 0.004 * s, 200)
    elif device == "central_line":
        line = [(cx - 0.1 * s, apex - 0.1 * s), (cx - 0.05 * s, apex + 0.05 * s),
                (cx - 0.03 * s, apex + (0.24 + 0.02 * j[1]) * s)]
        dev.line(_curve(line), 0.004 * s, 255)
    elif device == "sternotomy_wires":
        n = geo["count"]
        for k in range(n):
            wy = apex + (0.10 + 0.30 * k / max(1, n - 1)) * s
            wx = x_ant + 0.005 * s + 0.004 * s * j[k % 8]
            dev.loop(wx, wy, 0.007 * s, 0.014 * s, 0.004 * s, 255)


# ----------------------------------------------------------------------------- the whole image


def render(projection: str, study: dict, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """One 8-bit grayscale image (height x width) of `study` in `projection` ('frontal' / 'lateral')."""
    c = _Canvas(width, height, angle=float(rng.uniform(-2.5, 2.5)))
    jit = {
        "zoom": float(rng.uniform(0.97, 1.03)),
        "du": float(rng.uniform(-0.025, 0.025)),
        "dv": float(rng.uniform(-0.025, 0.025)),
        "background": float(rng.uniform(0.0, 0.08)),
    }
    devices = _DeviceLayer(c)
    draw = _frontal if projection == "frontal" else _lateral
    img = draw(c, study, jit, rng, devices)
    img = _soften(img) + float(rng.uniform(0.006, 0.012)) * _smooth_noise(rng, 110, c)  # quantum mottle
    # Exposure and display window differ per film (applied before upsampling: 4x fewer pixels).
    lo, hi = float(rng.uniform(-0.02, 0.04)), float(rng.uniform(0.86, 0.98))
    gamma = float(rng.uniform(0.85, 1.2))
    img = np.clip((img - lo) / (hi - lo), 0, 1) ** gamma

    full = np.asarray(Image.fromarray(img.astype(np.float32)).resize((width, height), Image.BICUBIC))
    alpha = devices.alpha()
    if alpha is not None:
        full = full * (1 - alpha) + 0.99 * alpha
    full = full + float(rng.uniform(0.0015, 0.0035)) * rng.standard_normal(full.shape, dtype=np.float32)
    return np.clip(full * 255 + 0.5, 0, 255).astype(np.uint8)
