"""The geometry of the 20 shiftbench classes, kept apart from how the domains draw them.

Each class is a list of polygons in a unit frame (about [-1, 1] on both axes, y down), tagged "add", "cut" or
"detail"; render.py places them with one transform, so the same geometry gives the filled object, the pencil
outline and the occlusion check, in every style and at every size. It is kept here because it is data, not
drawing: adding or reshaping a class touches only this file. The order of SHAPES is the label order (CLASSES),
so reordering it relabels every image; a class may take the image's generator to vary its form (the tree).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Parts = list[tuple[str, np.ndarray]]  # ("add" | "cut" | "detail", (n, 2) points); details are dark inner parts


def _ellipse(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * np.pi) -> np.ndarray:
    t = np.linspace(a0, a1, 40, endpoint=a1 - a0 < 2 * np.pi)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _circle(cx: float, cy: float, r: float) -> np.ndarray:
    return _ellipse(cx, cy, r, r)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def regular(corners: int, r: float) -> np.ndarray:
    t = -np.pi / 2 + np.arange(corners) * 2 * np.pi / corners
    return r * np.stack([np.cos(t), np.sin(t)], 1)


def rotation(angle: float) -> np.ndarray:
    """Right-multiplying (n, 2) points by this turns them by angle (clockwise on screen, y down)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s], [-s, c]])


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([16 * np.sin(t) ** 3, 2.5 - y], 1) / 16.5


def _tree(rng: np.random.Generator) -> Parts:
    trunk = [("add", rect(-0.14, 0.3, 0.14, 1.0))]
    if rng.random() < 0.5:  # a leafy crown of overlapping discs
        return trunk + [("add", _circle(x, y, r)) for x, y, r in
                        [(0, -0.45, 0.5), (-0.38, -0.12, 0.4), (0.38, -0.12, 0.4), (0, -0.05, 0.45)]]
    return trunk + [("add", np.array([[-w, y + 0.55], [0, y], [w, y + 0.55]])) for w, y in  # a pine
                    [(0.8, -0.05), (0.65, -0.5), (0.5, -0.95)]]


SHAPES: dict[str, Callable[[np.random.Generator], Parts]] = {
    "circle": lambda r: [("add", _circle(0, 0, 1))],
    "square": lambda r: [("add", rect(-0.85, -0.85, 0.85, 0.85))],
    "triangle": lambda r: [("add", regular(3, 1.15) + [0, 0.29])],
    "star": lambda r: [("add", regular(10, 1) * np.tile([[1], [0.42]], (5, 1)) + [0, 0.1])],
    "heart": lambda r: [("add", _heart())],
    "cross": lambda r: [("add", rect(-0.3, -0.95, 0.3, 0.95)), ("add", rect(-0.95, -0.3, 0.95, 0.3))],
    "arrow": lambda r: [("add", np.array([[-0.95, -0.2], [0.15, -0.2], [0.15, -0.6], [0.95, 0], [0.15, 0.6],
                                          [0.15, 0.2], [-0.95, 0.2]]))],
    "moon": lambda r: [("add", _circle(0, 0, 1)), ("cut", _circle(0.5, -0.25, 0.85))],
    "ring": lambda r: [("add", _circle(0, 0, 1)), ("cut", _circle(0, 0, 0.55))],
    "hexagon": lambda r: [("add", regular(6, 1))],
    "diamond": lambda r: [("add", np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]]))],
    "house": lambda r: [("add", rect(-0.7, -0.1, 0.7, 0.95)), ("add", rect(0.35, -0.8, 0.58, -0.2)),
                        ("add", np.array([[-0.95, -0.05], [0, -0.95], [0.95, -0.05]])),
                        ("cut", rect(-0.17, 0.4, 0.17, 0.95)), ("cut", rect(-0.55, 0.1, -0.3, 0.35))],
    "tree": _tree,
    "car": lambda r: [("add", rect(-1, -0.05, 1, 0.45)),
                      ("add", np.array([[-0.6, 0], [-0.35, -0.5], [0.35, -0.5], [0.62, 0]])),
                      ("cut", np.array([[-0.45, -0.05], [-0.29, -0.38], [-0.04, -0.38], [-0.04, -0.05]])),
                      ("cut", np.array([[0.04, -0.05], [0.04, -0.38], [0.29, -0.38], [0.47, -0.05]])),
                      ("detail", _circle(-0.55, 0.45, 0.27)), ("detail", _circle(0.55, 0.45, 0.27))],
    "fish": lambda r: [("add", _ellipse(-0.2, 0, 0.7, 0.45)),
                       ("add", np.array([[0.35, 0], [1.0, -0.5], [0.85, 0], [1.0, 0.5]])),
                       ("detail", _circle(-0.55, -0.1, 0.09))],
    "flower": lambda r: [("add", _ellipse(0, -0.55, 0.28, 0.45) @ rotation(a)) for a in np.arange(6) * np.pi / 3]
                        + [("detail", _circle(0, 0, 0.3))],
    "umbrella": lambda r: [("add", _ellipse(0, -0.05, 1, 0.85, np.pi, 2 * np.pi))]
                          + [("cut", _circle(x, 0.05, 0.17)) for x in (-0.5, 0, 0.5)]
                          + [("add", rect(-0.07, -0.1, 0.07, 0.75)),  # the handle, and its hook: half a ring
                             ("add", np.concatenate([_ellipse(-0.2, 0.72, 0.27, 0.27, 0, np.pi),
                                                     _ellipse(-0.2, 0.72, 0.13, 0.13, 0, np.pi)[::-1]]))],
    "key": lambda r: [("add", _circle(-0.6, 0, 0.38)), ("cut", _circle(-0.6, 0, 0.17)),
                      ("add", rect(-0.3, -0.1, 0.95, 0.1)), ("add", rect(0.52, 0.05, 0.66, 0.38)),
                      ("add", rect(0.78, 0.05, 0.93, 0.45))],
    "mushroom": lambda r: [("add", _ellipse(0, 0, 1, 0.9, np.pi, 2 * np.pi)),
                           ("add", np.array([[-0.3, -0.05], [0.3, -0.05], [0.38, 0.85], [-0.38, 0.85]]))]
                          + [("detail", _circle(x, y, 0.14)) for x, y in [(-0.45, -0.35), (0.1, -0.6), (0.5, -0.3)]],
    "lightning bolt": lambda r: [("add", np.array([[0.15, -1], [-0.5, 0.15], [0, 0.15], [-0.25, 1], [0.55, -0.25],
                                                   [0.05, -0.25], [0.4, -1]]))],
}
CLASSES: tuple[str, ...] = tuple(SHAPES)
