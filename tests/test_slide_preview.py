"""The live result of a streamed slide (napari_dgseg._napari.slide_preview), without a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg._napari.slide_preview import (
    LiveLevel,
    SlidePreview,
    live_levels,
    preview_executor,
)


def test_preview_factor_and_level_reads_sample_like_the_pyramid():
    preview = SlidePreview((1000, 600), side=256)
    assert preview.factor == 4 and preview.array.shape == (250, 150)
    preview.array[:] = np.arange(250)[:, None] * 1000 + np.arange(150)[None, :]
    level0, level1 = LiveLevel(preview, (1000, 600), 1), LiveLevel(preview, (500, 300), 2)
    # level pixel i is level-0 pixel i * downsample, read from preview pixel (i * d) // factor
    assert level0[9, 13] == preview.array[2, 3]
    assert np.array_equal(level1[4:8, 2], preview.array[[2, 2, 3, 3], 1])
    assert level1[::2, ::2].shape == (250, 150)
    assert np.array_equal(np.asarray(level1[::2, ::2]), preview.array)
    assert np.asarray(level0).shape == (1000, 600) and level0.dtype == np.int32


@pytest.mark.parametrize("downsample", [1, 2, 4, 8, 16])
def test_strided_reads_equal_the_nearest_sample_reads(downsample):
    """Evenly spaced reads go through a strided view, the others through fancy indexing:
    both give the preview's nearest samples, for every slice napari may ask for."""
    preview = SlidePreview((1000, 600), side=256)  # factor 4
    preview.array[:] = np.random.default_rng(1).integers(0, 50, preview.array.shape)
    shape = (-(-1000 // downsample), -(-600 // downsample))
    level = LiveLevel(preview, shape, downsample)
    keys = [(slice(None), slice(None)), (slice(3, None, 3), slice(7, 40)),
            (slice(5, 6), slice(0, 1)), (slice(None, None, -1), slice(None, None, 2)),
            (slice(2, 2), slice(None)), (4, slice(1, None, 5))]
    for key in keys:
        axes = [np.atleast_1d(np.arange(n)[k]) * downsample // 4
                for k, n in zip(key, shape, strict=True)]
        expected = preview.array[np.ix_(np.clip(axes[0], 0, 249), np.clip(axes[1], 0, 149))]
        if np.ndim(np.arange(shape[0])[key[0]]) == 0:
            expected = expected[0]
        got = level[key]
        assert got.shape == expected.shape and np.array_equal(got, expected), key
        got[...] = -1  # a copy: the preview is not changed through it
        assert preview.array.min() >= 0


def test_attached_level_reads_its_source_and_checks_the_shape():
    level = LiveLevel(SlidePreview((64, 64)), (64, 64), 1)
    source = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    level.attach(source)
    assert np.array_equal(level[3:9, 10:12], source[3:9, 10:12])
    with pytest.raises(ValueError, match="shape"):
        level.attach(np.zeros((32, 64), np.int32))


def test_instance_preview_shows_each_blocks_own_instances_before_stitching(tmp_path):
    """Painted from the blocks' pieces, the preview's nuclei are the stitched result's nuclei."""
    import zarr

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.wsi import predict_slide
    from napari_dgseg.core.wsi.store import pyramid_shapes
    from test_wsi_stream import nuclei_slide, write_pyramid

    slide = write_pyramid(tmp_path / "case.svs", nuclei_slide(704, 896, seed=3))
    bundle = load_bundle("classical-he")
    preview = SlidePreview((704, 896))  # factor 1: every pixel
    painted_before_end = []

    def executor(plan, ids, progress):
        def report(done, total):
            painted_before_end.append(len(preview.painted))
            progress(done, total)

        preview_executor(preview, bundle)(plan, ids, report)

    out = tmp_path / "case.zarr"
    summary = predict_slide(bundle, slide, out, block_size=256, block_executor=executor)
    assert painted_before_end == list(range(1, 13))  # each block painted before its report
    final = np.asarray(zarr.open_array(str(out / "0"), mode="r", zarr_format=2)[:])
    fg_preview, fg_final = preview.array > 0, final > 0
    n_final = summary["provenance"]["instances"]
    assert n_final > 100
    assert (fg_preview == fg_final).mean() > 0.99  # the same nuclei, ids aside
    assert np.unique(preview.array[preview.array > 0]).size >= n_final  # ids per block
    levels = live_levels(pyramid_shapes((704, 896)), preview)
    for k, level in enumerate(levels):
        level.attach(zarr.open_array(str(out / str(k)), mode="r", zarr_format=2))
    assert np.array_equal(np.asarray(levels[0][:, :]), final)
