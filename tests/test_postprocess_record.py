"""Measured post-processing overrides (``inference.postprocess``) reach post-processing only."""

from __future__ import annotations

import numpy as np

from napari_dgseg.core.bundle import load_bundle


def test_postprocess_overrides_reach_postprocessing_but_not_the_config(monkeypatch):
    bundle = load_bundle("nuclei-hovernet")
    base = bundle.config["marker_threshold"]
    bundle.manifest.setdefault("inference", {})["postprocess"] = {"marker_threshold": base + 0.05}
    assert bundle.config["marker_threshold"] == base  # what --init compares: untouched
    assert bundle.postprocess_config == {**bundle.config, "marker_threshold": base + 0.05}

    import dataclasses

    import napari_dgseg.core.bundle as bundle_module

    family = bundle.family
    seen = []

    def spy(maps, config):
        seen.append(dict(config))
        return family.postprocess(maps, config)

    spied = dataclasses.replace(family, postprocess=spy)
    monkeypatch.setattr(bundle_module, "get_family", lambda name: spied)
    rgb = np.full((96, 96, 3), 220, np.uint8)
    rgb[30:50, 30:50] = (90, 40, 140)
    bundle.predict(rgb, dcin="none", device="cpu", rescale="off")
    assert seen and all(c["marker_threshold"] == base + 0.05 for c in seen)


def test_without_a_record_postprocessing_reads_the_config():
    bundle = load_bundle("nuclei-hovernet")
    bundle.manifest.get("inference", {}).pop("postprocess", None)
    assert bundle.postprocess_config == bundle.config
