"""A small block plan for :class:`DaskBlockExecutor` tests (imported by the worker processes).

``StripPlan`` cuts an image (stored as ``.npy``) into horizontal strips; :func:`segment_strip`
runs the bundle's network on one strip and writes its labels into a shared ``.npy`` memory map,
the way a whole-slide block writes its part of the output store.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StripPlan:
    """Image file, output file, strip height; JSON round trip like ``SlidePlan``."""

    image: str
    out: str
    strip: int
    delay: float = 0.0
    fail_block: int = -1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StripPlan:
        return cls(**json.loads(text))

    def block_ids(self) -> list[int]:
        height = np.load(self.image, mmap_mode="r").shape[0]
        return list(range((height + self.strip - 1) // self.strip))


def segment_strip(bundle, plan: StripPlan, block_id: int) -> int:
    """Labels of strip ``block_id`` (the whole image's tiled prediction, cropped) into ``out``."""
    if block_id == plan.fail_block:
        raise ValueError(f"block {block_id} failed on purpose")
    if plan.delay:
        time.sleep(plan.delay)
    image = np.load(plan.image, mmap_mode="r")
    y0, y1 = block_id * plan.strip, min((block_id + 1) * plan.strip, image.shape[0])
    pred = bundle.predict(np.asarray(image[y0:y1]), tile=64, overlap=16, device="cpu",
                          dcin="none", rescale="off")
    out = np.load(plan.out, mmap_mode="r+")
    out[y0:y1] = pred.labels
    out.flush()
    Path(f"{plan.out}.{block_id}.done").touch()
    return block_id
