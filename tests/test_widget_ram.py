"""The ram / ram-sgcg families load and run in the Segment widget (real viewer, under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_ram.py -q

Tiny bundles are trained for a few iterations with the project's trainer on three in-memory
source domains, so they are real ``ram``/``ram-sgcg`` bundles (segmenter-only weights, DSIR and
SgCG parts in extra files).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


def _domain(name: str, tint: tuple[int, int, int], seed: int) -> list:
    from napari_dgseg.core.data.sample import Sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(2):
        lab = np.zeros((48, 48), np.int32)
        lab[:, 20 + i : 26 + i] = 1  # a vertical "vessel"
        img = np.where(lab[..., None] > 0, 70, 190) + np.array(tint)[None, None]
        img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
        out.append(Sample(image=img, labels=lab, name=f"{name}{i}", domain=name))
    return out


@pytest.fixture(scope="module")
def ram_models(tmp_path_factory):
    """A folder with ``tiny-ram.dgseg`` and ``tiny-ram-sgcg.dgseg``."""
    from napari_dgseg.core.train.source import train

    folder = tmp_path_factory.mktemp("ram-models")
    sources = [
        _domain("a", (0, 0, 0), 0),
        _domain("b", (30, -20, 0), 1),
        _domain("c", (-30, 10, 30), 2),
    ]
    cfg = {"widths": [8, 16, 32], "num_domains": 3}
    train("ram", sources, out=folder / "tiny-ram.dgseg", iters=2, size=32, batch=3, config=cfg)
    train(
        "ram-sgcg",
        sources,
        out=folder / "tiny-ram-sgcg.dgseg",
        iters=2,
        size=32,
        batch=3,
        config={**cfg, "sgcg_covariance": "diag"},
    )
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["tiny-ram", "tiny-ram-sgcg"])
def test_ram_family_runs_in_segment_widget(
    make_napari_viewer, qtbot, ram_models, monkeypatch, model_name
):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(ram_models))
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    qtbot.waitUntil(lambda: not widget.model_picker.loading, timeout=20000)
    widget.model_picker.load(model_name, sync=True)
    bundle = widget.model_picker.bundle
    assert bundle.name == model_name
    assert bundle.family_name == ("ram" if model_name == "tiny-ram" else "ram-sgcg")
    assert bundle.model.restoration is None  # inference builds the segmenter only
    widget.device_combo.setCurrentText("cpu")
    widget.tile_spin.setValue(256)
    widget.overlap_spin.setValue(32)

    img = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    viewer.add_image(img, name="fundus", rgb=True)
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    name = f"fundus labels ({model_name})"
    assert name in viewer.layers
    labels = viewer.layers[name]
    assert labels.data.shape == (90, 120) and labels.data.dtype == np.int32
    assert set(np.unique(labels.data)) <= {0, 1}
    assert labels.metadata["provenance"]["model"] == model_name
    expect = bundle.predict(img, device="cpu", tile=256, overlap=32).labels
    np.testing.assert_array_equal(labels.data, expect)
