"""Viewer geometry of the napari-dgseg widgets: regions, view extents, displayed planes.

Everything here maps between napari's world coordinates (camera, Shapes layers, layer
``scale``/``translate``) and level-0 pixels of an image layer, and slices the displayed 2-D plane
lazily (numpy views, dask and zarr stay unread). No Qt, no pixel computation.

Regions (:data:`REGIONS`)
-------------------------
``whole image (full resolution)``
    All of level 0.
``current view``
    The part of level 0 visible on the canvas (from the camera and canvas size).
``drawn rectangle``
    The bounding box of the first rectangle (else the first shape) of the chosen Shapes layer, in
    the image's pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError

__all__ = [
    "MAX_PIXELS",
    "REGIONS",
    "Region",
    "clip_box",
    "layer_plane",
    "level0_plane",
    "plane_shape",
    "region_in_layer",
    "shape_box_in_image",
    "visible_world_box",
    "world_box_to_pixels",
]

#: Region choices, in the order of the combo box.
REGIONS = ("whole image (full resolution)", "current view", "drawn rectangle")
#: Largest region (pixels) segmented in one run; beyond it the outputs alone need many GB.
MAX_PIXELS = 16384 * 16384


@dataclass(frozen=True)
class Region:
    """A rectangle of level-0 pixels: rows ``[y0, y1)``, columns ``[x0, x1)``."""

    mode: str
    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "y0": self.y0,
            "x0": self.x0,
            "height": self.shape[0],
            "width": self.shape[1],
        }


def plane_shape(layer: Any) -> tuple[int, int]:
    """Rows and columns of the layer's level 0."""
    data = layer.data[0] if layer.multiscale else layer.data
    shape = tuple(int(s) for s in data.shape)
    return (shape[-3], shape[-2]) if layer.rgb else (shape[-2], shape[-1])


def level0_plane(layer: Any, viewer: Any) -> tuple[Any, dict[str, Any]]:
    """The displayed 2-D plane of level 0 as a lazy ``(H, W)`` or ``(H, W, C)`` array.

    Leading axes (time, z, channels without ``rgb``) are indexed at the viewer's current
    position. Nothing is read: numpy gives a view, dask/zarr stay lazy.
    """
    return layer_plane(layer, viewer, level=0)


def layer_plane(layer: Any, viewer: Any, level: int = 0) -> tuple[Any, dict[str, Any]]:
    """The displayed 2-D plane of pyramid ``level`` (``-1``: the smallest) as a lazy array.

    Returns ``(plane, info)`` with ``plane`` ``(H, W)`` or ``(H, W, C)`` (numpy view, dask or
    zarr: nothing is read) and ``info = {"level": level, ["plane_index": [...]]}``.
    """
    levels = list(layer.data) if layer.multiscale else [layer.data]
    level = level % len(levels)
    data = levels[level]
    spatial_nd = data.ndim - (1 if layer.rgb else 0)
    extra: dict[str, Any] = {"level": level}
    if spatial_nd > 2:
        lead = spatial_nd - 2
        displayed = list(viewer.dims.displayed)
        layer_axes = list(range(viewer.dims.ndim - layer.ndim, viewer.dims.ndim))
        if len(displayed) != 2 or displayed != layer_axes[-2:]:
            raise InputError(
                f"layer {layer.name!r} has {spatial_nd} dimensions and its last two are not the "
                "ones displayed; switch to the 2D view with the image rows/columns on screen"
            )
        point = layer.world_to_data(viewer.dims.point)
        index = tuple(
            int(np.clip(round(float(point[i])), 0, data.shape[i] - 1)) for i in range(lead)
        )
        data = data[index]
        extra["plane_index"] = list(index)
    return data, extra


def visible_world_box(viewer: Any) -> np.ndarray:
    """``(2, 2)`` world coordinates (top-left, bottom-right) of the canvas' displayed axes."""
    ndisplay = viewer.dims.ndisplay
    if ndisplay != 2:
        raise InputError(
            "'current view' needs the 2D view; switch the viewer to 2D or pick another region"
        )
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    canvas = getattr(qt_viewer, "canvas", None)
    try:
        corners = np.asarray(canvas._viewbox_corners_in_world, dtype=float)
        if corners.shape[0] == 2 and corners.shape[1] >= 2 and np.isfinite(corners).all():
            return corners[:, list(viewer.dims.displayed)]
    except Exception:  # private API changed or no canvas: fall back to camera maths
        pass
    native = getattr(canvas, "native", None)
    height, width = (native.height(), native.width()) if native is not None else (600, 800)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    center = np.asarray(camera.center, dtype=float)[-2:]
    half = np.array([height, width], dtype=float) / (2.0 * float(camera.zoom))
    return np.stack([center - half, center + half])


def world_box_to_pixels(layer: Any, viewer: Any, world_yx: np.ndarray) -> np.ndarray:
    """Map world ``(N, 2)`` points of the displayed axes to level-0 pixel ``(N, 2)`` of ``layer``."""
    base = np.asarray(viewer.dims.point, dtype=float)
    out = []
    displayed = list(viewer.dims.displayed)
    for yx in world_yx:
        pos = base.copy()
        pos[displayed] = yx
        data_pos = np.asarray(layer.world_to_data(pos), dtype=float)
        out.append(data_pos[-2:])  # layer.ndim excludes the RGB axis
    return np.asarray(out)


def clip_box(mode: str, pixels: np.ndarray, shape: tuple[int, int], what: str) -> Region:
    """The region of a box given by level-0 pixel corners ``(N, 2)``, clipped to ``shape``.

    The box keeps its size: it starts at the pixel nearest to its top-left corner and spans
    its height and width rounded to whole pixels, so a 301 x 173 px rectangle (drawn from pixel
    centre to pixel centre, or from pixel edge to pixel edge) is a 301 x 173 px region. Taking
    the floor of one corner and the ceiling of the other would add a pixel whenever the corners
    fall between pixel centres (a 1024 px view became 1025 px).
    """
    h, w = shape
    corners = np.round(np.asarray(pixels, dtype=float), 6)  # float noise of world <-> data
    low, high = corners.min(axis=0), corners.max(axis=0)
    start = np.floor(low + 0.5).astype(int)
    size = np.round(high - low).astype(int)
    y0, x0 = int(np.clip(start[0], 0, h)), int(np.clip(start[1], 0, w))
    y1, x1 = int(np.clip(start[0] + size[0], 0, h)), int(np.clip(start[1] + size[1], 0, w))
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"{what} does not overlap the image; {_REGION_HINT[mode]}")
    return Region(mode, y0, x0, y1, x1)


_REGION_HINT = {
    REGIONS[1]: "pan/zoom so that the image is on screen",
    REGIONS[2]: "draw the rectangle over the image",
}


def shape_box_in_image(shapes_layer: Any, image_layer: Any, viewer: Any) -> np.ndarray:
    """Level-0 pixel corners ``(N, 2)`` of the first rectangle (else first shape) of a layer."""
    if shapes_layer is None or len(shapes_layer.data) == 0:
        raise InputError(
            "'drawn rectangle' needs a Shapes layer with a rectangle: add a Shapes layer, draw a "
            "rectangle over the image, and choose that layer under 'Shapes'"
        )
    types = list(shapes_layer.shape_type)
    index = types.index("rectangle") if "rectangle" in types else 0
    verts = np.asarray(shapes_layer.data[index], dtype=float)
    world = np.asarray([shapes_layer.data_to_world(v) for v in verts], dtype=float)
    displayed = list(viewer.dims.displayed)
    nd = viewer.dims.ndim
    world_full = np.zeros((len(world), nd))
    world_full[:, nd - world.shape[1] :] = world
    return world_box_to_pixels(image_layer, viewer, world_full[:, displayed])


def region_in_layer(mode: str, layer: Any, viewer: Any, shapes_layer: Any = None) -> Region:
    """The level-0 pixel region of ``layer`` for a :data:`REGIONS` choice.

    Parameters
    ----------
    mode : str
        One of :data:`REGIONS`.
    layer : napari.layers.Image
        The image to segment.
    viewer : napari.Viewer
        For the current view and the displayed plane.
    shapes_layer : napari.layers.Shapes, optional
        Holds the rectangle of mode ``"drawn rectangle"``.

    Raises
    ------
    InputError
        The view or rectangle does not overlap the image, or there is no rectangle.
    """
    shape = plane_shape(layer)
    if mode == REGIONS[0]:
        return Region(mode, 0, 0, shape[0], shape[1])
    if mode == REGIONS[1]:
        world = visible_world_box(viewer)
        pixels = world_box_to_pixels(layer, viewer, world)
        return clip_box(mode, pixels, shape, "the current view")
    pixels = shape_box_in_image(shapes_layer, layer, viewer)
    return clip_box(mode, pixels, shape, "the drawn rectangle")
