"""Mask colours chosen for the task, so masks stand out from the tissue they lie on.

A bundle's class colours are often the default red, which vanishes on a red fundus image and
blends with eosin on H&E. The display colour of a class is therefore chosen from what the class
*is* (its name, or the bundle's ``task`` field for a two-class model), against the colour of the
images that task works on:

* vessels lie on a red-orange fundus: cyan ``(0, 230, 255)``, its complementary hue;
* nuclei lie on purple-and-pink H&E: chartreuse ``(170, 255, 0)``, the complement of
  hematoxylin's blue-purple, far from eosin's pink too.

Other classes keep the bundle's colour. Instance masks (one id per object) are drawn in one
task colour; their outlines (Labels ``contour``) separate touching objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "TASK_COLOURS",
    "default_contour",
    "instance_colormap",
    "semantic_colormap",
    "style_labels_for",
    "task_colours",
]

#: ``(keyword, rgb)``: a class whose name (or a two-class model's task) contains the keyword.
TASK_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("vessel", (0, 230, 255)),
    ("nucle", (170, 255, 0)),
)


def _match(text: str) -> tuple[int, int, int] | None:
    low = text.lower()
    for keyword, rgb in TASK_COLOURS:
        if keyword in low:
            return rgb
    return None


def task_colours(
    class_names: Sequence[str],
    task: str | None = None,
    class_colors: Mapping[int, Sequence[int]] | None = None,
) -> dict[int, tuple[int, int, int]]:
    """Display colour ``{class id: (r, g, b)}`` of every class (0 is background).

    Parameters
    ----------
    class_names : sequence of str
        The bundle's class names, by id.
    task : str, optional
        The bundle's ``task`` field; decides the foreground colour of a two-class model whose
        class name says nothing (``"foreground"``).
    class_colors : mapping, optional
        The bundle's colours, kept for classes no keyword matches.

    Returns
    -------
    dict
        Colours of ids ``1 .. len(class_names) - 1`` (and of any id only in ``class_colors``).
    """
    out: dict[int, tuple[int, int, int]] = {
        int(k): tuple(int(c) for c in list(v)[:3]) for k, v in (class_colors or {}).items()
    }
    for cid, name in enumerate(class_names):
        if cid == 0:
            continue
        rgb = _match(str(name))
        if rgb is None and len(class_names) == 2 and task:
            rgb = _match(str(task))
        if rgb is not None:
            out[cid] = rgb
        elif cid not in out:
            out[cid] = (255, 64, 64)
    out[0] = (0, 0, 0)
    return out


def semantic_colormap(colours: Mapping[int, Sequence[int]]) -> Any:
    """napari ``DirectLabelColormap``: each class its colour, background and unknown ids clear."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[int | None, np.ndarray] = {None: np.zeros(4, np.float32)}
    for cid, rgb in colours.items():
        if int(cid) == 0:
            continue
        color_dict[int(cid)] = np.array([*(float(v) / 255.0 for v in list(rgb)[:3]), 1.0], np.float32)
    color_dict[0] = np.zeros(4, np.float32)
    return DirectLabelColormap(color_dict=color_dict)


def instance_colormap(rgb: Sequence[int]) -> Any:
    """napari ``DirectLabelColormap``: every instance id in ``rgb``, background clear."""
    from napari.utils.colormaps import DirectLabelColormap

    colour = np.array([*(float(v) / 255.0 for v in list(rgb)[:3]), 1.0], np.float32)
    return DirectLabelColormap(color_dict={None: colour, 0: np.zeros(4, np.float32)})


def default_contour(output: str) -> int:
    """Outline width in pixels a mask is first shown with: instances outlined, classes filled."""
    return 2 if output == "instances" else 0


def style_labels_for(layer: Any, bundle: Any) -> None:
    """Give a Labels layer made by ``bundle`` its task colours and first outline width.

    Instances: every id in the task colour of class 1, outlined; classes: each its task colour,
    filled. Does nothing without a bundle.
    """
    if bundle is None:
        return
    colours = task_colours(bundle.class_names, bundle.manifest.get("task"), bundle.class_colors)
    output = bundle.family.output
    if output == "instances":
        layer.colormap = instance_colormap(colours.get(1, (255, 64, 64)))
    else:
        layer.colormap = semantic_colormap(colours)
    layer.contour = default_contour(output)
