"""Dataset loaders: tiny fixtures written in each native format, loaded arrays checked exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi
from scipy.io import savemat

from napari_dgseg.core.data import datasets as ds
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import ImageReadError, InputError


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _check_sample(s: Sample) -> None:
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[-1] == 3
    if s.labels is not None:
        assert s.labels.dtype == np.int32 and s.labels.shape == s.image.shape[:2]
    if s.mask is not None:
        assert s.mask.dtype == bool and s.mask.shape == s.image.shape[:2]


# ------------------------------------------------------------------------------------------
# generic folder
# ------------------------------------------------------------------------------------------


def _make_folder(root: Path) -> dict:
    img_a = _rgb(6, 5, 1)
    grey_b = np.arange(30, dtype=np.uint8).reshape(6, 5) * 8
    rgba_c = np.dstack([_rgb(6, 5, 2), np.full((6, 5), 7, np.uint8)])
    lab_a = np.zeros((6, 5), np.uint16)
    lab_a[1:3, 1:4] = 300
    lab_b = np.eye(6, 5, dtype=np.uint8) * 2
    lab_c = np.ones((6, 5), np.int64) * 4
    _png(root / "images" / "a.png", img_a)
    (root / "images").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "images" / "b.tif", grey_b)
    _png(root / "images" / "c.png", rgba_c)
    (root / "labels").mkdir()
    tifffile.imwrite(root / "labels" / "a.tif", lab_a)
    _png(root / "labels" / "b_labels.png", lab_b)
    np.save(root / "labels" / "c.npy", lab_c)
    mask_a = np.zeros((6, 5), np.uint8)
    mask_a[:, 2:] = 255
    _png(root / "masks" / "a.png", mask_a)
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    return {"a": (img_a, lab_a, mask_a), "b": (grey_b, lab_b), "c": (rgba_c, lab_c)}


def test_load_folder_exact(tmp_path):
    ref = _make_folder(tmp_path / "site1")
    samples = ds.load_folder(tmp_path / "site1")
    assert [s.name for s in samples] == ["a", "b", "c"]
    a, b, c = samples
    for s in samples:
        _check_sample(s)
        assert s.domain == "site1"
    np.testing.assert_array_equal(a.image, ref["a"][0])
    np.testing.assert_array_equal(a.labels, ref["a"][1].astype(np.int32))
    np.testing.assert_array_equal(a.mask, ref["a"][2] > 0)
    np.testing.assert_array_equal(b.image, np.repeat(ref["b"][0][..., None], 3, axis=-1))
    np.testing.assert_array_equal(b.labels, ref["b"][1])
    assert b.mask is None
    # RGBA is composited on white, as inference does (core.imageprep): alpha 7 is nearly clear
    a_c = 7 / 255
    expected_c = np.round(ref["c"][0][..., :3] * a_c + 255 * (1 - a_c))
    np.testing.assert_allclose(c.image, expected_c, atol=1)
    np.testing.assert_array_equal(c.labels, ref["c"][1])


def test_load_folder_missing_labels_named(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "labels" / "c.npy").unlink()
    with pytest.raises(InputError, match=r"1 label files missing: .*c\.tif"):
        ds.load_folder(tmp_path)
    samples = ds.load_folder(tmp_path, require_labels=False, domain="x")
    assert samples[2].labels is None and samples[0].labels is not None
    assert {s.domain for s in samples} == {"x"}


def test_load_folder_layout_errors(tmp_path):
    with pytest.raises(InputError, match=r"images.*folder not found.*ROOT/images"):
        ds.load_folder(tmp_path)
    _png(tmp_path / "images" / "a.png", _rgb(4, 4))
    with pytest.raises(InputError, match="no labels/ folder"):
        ds.load_folder(tmp_path)
    assert ds.load_folder(tmp_path, require_labels=False)[0].labels is None


def test_load_folder_bad_files(tmp_path):
    _png(tmp_path / "images" / "a.png", _rgb(4, 4))
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "labels" / "a.tif", np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match=r"shape \(4, 5\).*shape \(4, 4\)"):
        ds.load_folder(tmp_path)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", _rgb(4, 4))
    with pytest.raises(InputError, match="colour image"):
        ds.load_folder(tmp_path)
    (tmp_path / "labels" / "a.tif").write_text("not a tiff")
    with pytest.raises(ImageReadError, match=r"a\.tif: cannot read the file as a TIF image"):
        ds.load_folder(tmp_path)
    (tmp_path / "labels" / "a.tif").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        ds.load_folder(tmp_path)
    (tmp_path / "labels" / "a.tif").unlink()
    np.save(tmp_path / "labels" / "a.npy", np.array([{"x": 1}], dtype=object))
    with pytest.raises(ImageReadError, match="pickle"):
        ds.load_folder(tmp_path)


def test_load_domains(tmp_path):
    _make_folder(tmp_path / "scannerA")
    _make_folder(tmp_path / "scannerB")
    (tmp_path / "notes").mkdir()
    out = ds.load_domains(tmp_path)
    assert list(out) == ["scannerA", "scannerB"]
    assert all(s.domain == "scannerB" for s in out["scannerB"])
    assert len(out["scannerA"]) == 3
    with pytest.raises(InputError, match="no domain sub-folders"):
        ds.load_domains(tmp_path / "notes")


def test_save_folder_round_trip(tmp_path):
    _make_folder(tmp_path / "src")
    samples = ds.load_folder(tmp_path / "src")
    samples[0].name = "odd name/1"
    ds.save_folder(samples, tmp_path / "out")
    back = ds.load_folder(tmp_path / "out", require_labels=True)
    assert [s.name for s in back] == ["b", "c", "odd_name_1"]
    by = {s.name: s for s in back}
    np.testing.assert_array_equal(by["odd_name_1"].image, samples[0].image)
    np.testing.assert_array_equal(by["odd_name_1"].labels, samples[0].labels)
    np.testing.assert_array_equal(by["odd_name_1"].mask, samples[0].mask)
    assert by["b"].mask is None
    assert not list((tmp_path / "out").rglob(".*"))  # no temporary files left


def test_load_dataset_registry(tmp_path):
    _make_folder(tmp_path)
    assert len(ds.load_dataset("folder", tmp_path)) == 3
    with pytest.raises(InputError, match="valid layouts: chase, consep"):
        ds.load_dataset("nope", tmp_path)


# ------------------------------------------------------------------------------------------
# nuclei datasets
# ------------------------------------------------------------------------------------------

MONUSEG_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Annotations MicronsPerPixel="0.252100">
<Annotation Id="1" Type="4">
<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>
<Regions>
<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/></RegionAttributeHeaders>
<Region Id="1" Type="0" Zoom="1" Text="" NegativeROA="0">
<Attributes/>
<Vertices>
<Vertex X="2.5" Y="3.5" Z="0"/><Vertex X="6.5" Y="3.5" Z="0"/>
<Vertex X="6.5" Y="8.5" Z="0"/><Vertex X="2.5" Y="8.5" Z="0"/>
</Vertices>
</Region>
<Region Id="2" Type="0"><Attributes/><Vertices>
<Vertex X="1" Y="1" Z="0"/><Vertex X="2" Y="2" Z="0"/>
</Vertices></Region>
<Region Id="3" Type="0"><Attributes/><Vertices>
<Vertex X="5.5" Y="7.5" Z="0"/><Vertex X="9.5" Y="7.5" Z="0"/>
<Vertex X="9.5" Y="10.5" Z="0"/><Vertex X="5.5" Y="10.5" Z="0"/>
</Vertices></Region>
</Regions>
</Annotation>
</Annotations>
"""


def _monuseg_expected() -> np.ndarray:
    lab = np.zeros((12, 14), np.int32)
    lab[4:9, 3:7] = 1  # rows 3.5..8.5, cols 2.5..6.5 (pixel centres inside)
    lab[8:11, 6:10] = 2  # the later region overwrites the overlap; the 2-vertex region is dropped
    return lab


@pytest.mark.parametrize("layout", ["official", "flat"])
def test_load_monuseg(tmp_path, layout):
    img = _rgb(12, 14, 3)
    if layout == "official":
        img_dir, xml_dir = tmp_path / "Tissue Images", tmp_path / "Annotations"
    else:
        img_dir = xml_dir = tmp_path
    img_dir.mkdir(exist_ok=True)
    xml_dir.mkdir(exist_ok=True)
    tifffile.imwrite(img_dir / "TCGA-XX.tif", img)
    (xml_dir / "TCGA-XX.xml").write_text(MONUSEG_XML)
    (s,) = ds.load_monuseg(tmp_path)
    _check_sample(s)
    np.testing.assert_array_equal(s.image, img)
    np.testing.assert_array_equal(s.labels, _monuseg_expected())
    assert s.meta["microns_per_pixel"] == pytest.approx(0.2521)
    assert s.domain == "MoNuSeg" and s.name == "TCGA-XX"


def test_load_monuseg_errors(tmp_path):
    (tmp_path / "Tissue Images").mkdir()
    tifffile.imwrite(tmp_path / "Tissue Images" / "a.tif", _rgb(4, 4))
    with pytest.raises(InputError, match="Annotations.*folder not found"):
        ds.load_monuseg(tmp_path)
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(InputError, match=r"annotation files missing: .*a\.xml"):
        ds.load_monuseg(tmp_path)
    (tmp_path / "Annotations" / "a.xml").write_text("<Annotations><Region>")
    with pytest.raises(ImageReadError, match=r"a\.xml: not a readable MoNuSeg XML"):
        ds.load_monuseg(tmp_path)


def _pannuke_fixture(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 3)).astype(np.float64)
    masks = np.zeros((2, 6, 6, 6), np.float64)
    masks[0, 0:2, 0:2, 0] = 5  # neoplastic nucleus id 5
    masks[0, 3:5, 3:5, 1] = 5  # inflammatory nucleus also id 5: must stay separate
    masks[0, 0:2, 4:6, 4] = 2  # epithelial id 2
    masks[..., 5] = (masks[..., :5].sum(-1) == 0).astype(np.float64)  # background channel
    (root / "images" / "fold1").mkdir(parents=True)
    (root / "masks" / "fold1").mkdir(parents=True)
    np.save(root / "images" / "fold1" / "images.npy", images)
    np.save(root / "masks" / "fold1" / "masks.npy", masks)
    np.save(root / "images" / "fold1" / "types.npy", np.array(["Breast", "Colon"]))
    return images, masks


def test_load_pannuke(tmp_path):
    fold = tmp_path / "Fold 1"
    images, _ = _pannuke_fixture(fold)
    s0, s1 = ds.load_pannuke(fold)
    for s in (s0, s1):
        _check_sample(s)
    np.testing.assert_array_equal(s0.image, images[0].astype(np.uint8))
    want = np.zeros((6, 6), np.int32)
    want[0:2, 0:2] = 1  # channel order: neoplastic (ch 0) first
    want[3:5, 3:5] = 2
    want[0:2, 4:6] = 3
    np.testing.assert_array_equal(s0.labels, want)
    types = np.zeros((6, 6), np.int32)
    types[0:2, 0:2] = 1
    types[3:5, 3:5] = 2
    types[0:2, 4:6] = 5
    np.testing.assert_array_equal(s0.meta["types"], types)
    assert (s0.domain, s1.domain) == ("Breast", "Colon")
    assert not s1.labels.any()
    (only,) = ds.load_pannuke(fold, indices=[1])
    assert only.domain == "Colon" and only.name == "Fold 1_00001"


def test_load_pannuke_errors(tmp_path):
    fold = tmp_path / "Fold 1"
    _pannuke_fixture(fold)
    (fold / "masks" / "fold1" / "masks.npy").unlink()
    with pytest.raises(InputError, match=r"no masks\.npy found"):
        ds.load_pannuke(fold)
    np.save(fold / "masks.npy", np.zeros((3, 6, 6, 6)))
    with pytest.raises(InputError, match=r"expected \(N, H, W, 6\) matching"):
        ds.load_pannuke(fold)
    np.save(fold / "masks.npy", np.zeros((2, 6, 6, 6)))
    np.save(fold / "images" / "fold1" / "types.npy", np.array(["a", 1], dtype=object))
    with pytest.raises(ImageReadError, match="pickle"):
        ds.load_pannuke(fold)


def test_load_consep(tmp_path):
    split = tmp_path / "CoNSeP" / "Train"
    rgba = np.dstack([_rgb(5, 7, 4), np.full((5, 7), 255, np.uint8)])
    _png(split / "Images" / "train_1.png", rgba)
    inst = np.zeros((5, 7))
    inst[1:3, 1:3] = 1
    inst[3:5, 4:7] = 2
    tmap = np.where(inst == 1, 3, np.where(inst == 2, 7, 0)).astype(np.float64)
    (split / "Labels").mkdir()
    savemat(split / "Labels" / "train_1.mat", {"inst_map": inst, "type_map": tmap})
    (s,) = ds.load_consep(split)
    _check_sample(s)
    np.testing.assert_array_equal(s.image, rgba[..., :3])
    np.testing.assert_array_equal(s.labels, inst.astype(np.int32))
    np.testing.assert_array_equal(s.meta["types"], tmap.astype(np.int32))
    assert s.domain == "CoNSeP"
    with pytest.raises(InputError, match="pass one split folder"):
        ds.load_consep(tmp_path / "CoNSeP")
    savemat(split / "Labels" / "train_1.mat", {"other": inst})
    with pytest.raises(InputError, match=r"no 'inst_map' variable \(found \['other'\]\)"):
        ds.load_consep(split)
    savemat(split / "Labels" / "train_1.mat", {"inst_map": inst + 0.5})
    with pytest.raises(InputError, match="fractional"):
        ds.load_consep(split)


# ------------------------------------------------------------------------------------------
# retina datasets
# ------------------------------------------------------------------------------------------


def _fundus(h: int = 20, w: int = 24) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    fov = (yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 < (min(h, w) / 2 - 1) ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[fov] = (180, 90, 40)
    img[fov & (xx == 10)] = (60, 20, 10)  # a dark vessel inside the disc (a hole to fill)
    return img, fov


def _vessels(h: int = 20, w: int = 24) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    lab[5:15, 10] = 255
    lab[9, 4:20] = 255
    return lab


def test_load_drive(tmp_path):
    img, fov = _fundus()
    for split, stem in (("training", "21_training"), ("test", "01_test")):
        d = tmp_path / "DRIVE" / split
        (d / "images").mkdir(parents=True)
        tifffile.imwrite(d / "images" / f"{stem}.tif", img)
        (d / "1st_manual").mkdir()
        (d / "mask").mkdir()
        Image.fromarray(_vessels()).save(d / "1st_manual" / f"{stem[:2]}_manual1.gif")
        Image.fromarray(fov.astype(np.uint8) * 255).save(d / "mask" / f"{stem}_mask.gif")
    samples = ds.load_drive(tmp_path / "DRIVE")
    assert [s.name for s in samples] == ["training_21_training", "test_01_test"]
    for s in samples:
        _check_sample(s)
        np.testing.assert_array_equal(s.image, img)
        np.testing.assert_array_equal(s.labels, (_vessels() > 0).astype(np.int32))
        np.testing.assert_array_equal(s.mask, fov)
        assert s.domain == "DRIVE" and s.meta["fov"] == "file"
    assert len(ds.load_drive(tmp_path / "DRIVE" / "test")) == 1
    (tmp_path / "DRIVE" / "test" / "1st_manual" / "01_manual1.gif").unlink()
    with pytest.raises(InputError, match=r"manual annotations missing: .*01_test\.tif"):
        ds.load_drive(tmp_path / "DRIVE" / "test")
    assert ds.load_drive(tmp_path / "DRIVE" / "test", require_labels=False)[0].labels is None
    (tmp_path / "DRIVE" / "test" / "mask" / "01_test_mask.gif").unlink()
    with pytest.raises(InputError, match=r"FOV masks missing: .*01_test_mask\.gif"):
        ds.load_drive(tmp_path / "DRIVE" / "test", require_labels=False)


def test_load_stare(tmp_path):
    img, fov = _fundus()
    Image.fromarray(img).save(tmp_path / "im0001.ppm")
    (tmp_path / "labels-ah").mkdir()
    Image.fromarray(_vessels()).save(tmp_path / "labels-ah" / "im0001.ah.ppm")
    (s,) = ds.load_stare(tmp_path)
    _check_sample(s)
    np.testing.assert_array_equal(s.image, img)
    np.testing.assert_array_equal(s.labels, (_vessels() > 0).astype(np.int32))
    np.testing.assert_array_equal(s.mask, fov)  # threshold + hole filling recovers the FOV
    assert s.domain == "STARE" and s.name == "im0001"
    Image.fromarray(img).save(tmp_path / "im0002.ppm")
    with pytest.raises(InputError, match=r"im0002\.ppm"):
        ds.load_stare(tmp_path)


def test_load_chase(tmp_path):
    img, fov = _fundus(80, 96)
    Image.fromarray(img).save(tmp_path / "Image_01L.jpg", quality=100)
    Image.fromarray(_vessels(80, 96)).save(tmp_path / "Image_01L_1stHO.png")
    Image.fromarray(_vessels(80, 96)).save(tmp_path / "Image_01L_2ndHO.png")
    (s,) = ds.load_chase(tmp_path)
    _check_sample(s)
    assert np.abs(s.image.astype(int) - img).mean() < 8  # JPEG is lossy
    np.testing.assert_array_equal(s.labels, (_vessels(80, 96) > 0).astype(np.int32))
    # JPEG ringing may move the rim by one pixel, nothing else
    rim = ndi.binary_dilation(fov) & ~ndi.binary_erosion(fov)
    assert not ((s.mask != fov) & ~rim).any()
    assert s.mask[fov & ~rim].all()
    assert s.domain == "CHASE_DB1" and s.name == "Image_01L"


def test_load_fundus_cup_disc(tmp_path):
    root = tmp_path / "Fundus" / "Domain2" / "train"
    img = _rgb(8, 8, 5)
    grey = np.full((8, 8), 255, np.uint8)
    grey[1:7, 1:7] = 128
    grey[3:5, 3:5] = 0
    grey[0, 0] = 250  # resampling noise -> background
    grey[1, 1] = 120  # -> rim
    grey[3, 3] = 20  # -> cup
    _png(root / "ROIs" / "image" / "g0001.png", img)
    _png(root / "ROIs" / "mask" / "g0001.png", np.dstack([grey] * 3))
    (s,) = ds.load_fundus_cup_disc(root)
    _check_sample(s)
    want = np.zeros((8, 8), np.int32)
    want[1:7, 1:7] = 1
    want[3:5, 3:5] = 2
    np.testing.assert_array_equal(s.image, img)
    np.testing.assert_array_equal(s.labels, want)
    assert s.domain == "Domain2"
    assert len(ds.load_fundus_cup_disc(root / "ROIs")) == 1
    (root / "ROIs" / "mask" / "g0001.png").unlink()
    with pytest.raises(InputError, match=r"masks missing: .*g0001\.png"):
        ds.load_fundus_cup_disc(root)


# ------------------------------------------------------------------------------------------
# conversions
# ------------------------------------------------------------------------------------------


def test_to_rgb_uint8_conversions():
    np.testing.assert_array_equal(
        ds.to_rgb_uint8(np.array([[0.0, 1.0]])), [[[0, 0, 0], [255, 255, 255]]]
    )
    np.testing.assert_array_equal(ds.to_rgb_uint8(np.array([[0, 65535]], np.uint16))[0, 1], 255)
    np.testing.assert_array_equal(ds.to_rgb_uint8(np.array([[True]]))[0, 0], 255)
    chw = np.zeros((3, 5, 6), np.uint8)
    chw[1] = 9
    out = ds.to_rgb_uint8(chw)
    assert out.shape == (5, 6, 3) and (out[..., 1] == 9).all()
    with pytest.raises(InputError, match=r"got shape \(6, 7, 5\)"):
        ds.to_rgb_uint8(np.zeros((6, 7, 5)))
