"""Hostile and broken files, reading side: bounded memory, one clear line, nothing lost.

Every hostile file is crafted here: zip bombs with a small compressed size (a real deflate stream
of 3.9 GB of zeros, about 24 MB), headers that lie about sizes, JSON bombs and deep nesting,
configs describing gigantic networks, NaN weights, wrong shapes, a bad reference bank, unsafe
member names, random bit flips and truncations of a valid bundle, broken PNG and TIFF files and a
decompression-bomb PNG. A representative subset runs through the real ``dgseg`` entry point in
a child process, which must exit non-zero with exactly one line on stderr, no traceback, and a
peak resident memory under 1 GB (the child's own ``VmHWM``, written by the child on exit).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import napari_dgseg
from napari_dgseg.core.bundle import (
    MANIFEST,
    WEIGHTS,
    Bundle,
    list_bundles,
    load_bundle,
    read_bundle_bytes,
)
from napari_dgseg.core.errors import BundleError, DgsegError, ImageReadError, InputError
from napari_dgseg.core.limits import (
    MAX_BUNDLE_MEMBERS,
    MAX_JSON_DEPTH,
    json_depth,
    load_json_bounded,
    safe_file_stem,
)

PEAK_RSS_LIMIT = 1 << 30  # bytes


# ----------------------------------------------------------------------------- crafting
def _fixed_huffman_zeros(pairs: int) -> bytes:
    """Raw deflate: one literal 0 then ``pairs`` copies of <length 258, distance 1>, EOB."""
    acc = nbits = 0

    def put(value: int, n: int, msb_first: bool = True) -> None:
        nonlocal acc, nbits
        order = range(n - 1, -1, -1) if msb_first else range(n)
        for i in order:
            acc |= ((value >> i) & 1) << nbits
            nbits += 1

    put(1, 1, False)  # BFINAL
    put(1, 2, False)  # BTYPE = fixed Huffman
    put(0b00110000, 8)  # literal 0
    for _ in range(pairs):
        put(0b11000101, 8)  # length code 285 = 258 bytes
        put(0, 5)  # distance code 0 = 1 byte back
    put(0, 7)  # end of block
    return acc.to_bytes((nbits + 7) // 8, "little")


def deflate_bomb(pairs: int) -> tuple[bytes, int]:
    """A real deflate stream inflating to ``1 + 258 * pairs`` zero bytes, built without inflating.

    Eight pairs are 104 bits, 13 whole bytes, so the stream repeats a 13-byte period after its
    first two bytes: the period is copied instead of encoding millions of pairs one by one.
    """
    m, r = divmod(pairs, 8)
    if m < 2:
        return _fixed_huffman_zeros(pairs), 1 + 258 * pairs
    small = _fixed_huffman_zeros(16 + r)
    return small[:2] + small[2:15] * (m - 2) + small[2:], 1 + 258 * pairs


def write_raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip from ``(name, stored bytes, method, crc, declared size)``: headers may lie."""
    out = io.BytesIO()
    central = []
    for name, data, method, crc, size in members:
        fname = name.encode("utf-8")
        offset = out.tell()
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                              len(data), size, len(fname), 0) + fname)
        out.write(data)
        central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0,
                                   0, crc, len(data), size, len(fname), 0, 0, 0, 0, 0, offset)
                       + fname)
    start = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central),
                          out.tell() - start, start, 0))
    path.write_bytes(out.getvalue())
    return path


def deflated(data: bytes) -> tuple[bytes, int, int, int]:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(), zipfile.ZIP_DEFLATED, zlib.crc32(data), len(data)


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def rezip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def with_manifest(src: Path, dest: Path, edit) -> Path:
    files = members(src)
    manifest = json.loads(files[MANIFEST])
    edit(manifest)
    files[MANIFEST] = json.dumps(manifest).encode()
    return rezip(dest, files)


def one_line_refusal(path: Path, *patterns: str, kind: type[Exception] = BundleError) -> str:
    with pytest.raises(kind) as info:
        load_bundle(path)
    msg = str(info.value)
    assert "\n" not in msg and msg
    for p in patterns:
        assert p in msg, (p, msg)
    return msg


# ----------------------------------------------------------------------------- the CLI child
#: Child prelude: on exit, write this process's peak resident memory (``VmHWM``) to the file named
#: by ``$DGSEG_TEST_HWM``. ``VmHWM`` belongs to the process image after exec; ``ru_maxrss`` (also
#: from ``os.wait4``) would count the parent's pages too, since Linux carries the parent's
#: high-water mark into the child when it is started by vfork, as subprocess does.
_HWM_PRELUDE = """
import atexit, os
def _dgseg_test_hwm():
    with open("/proc/self/status") as fh:
        kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    with open(os.environ["DGSEG_TEST_HWM"], "w") as out:
        out.write(str(kb * 1024))
atexit.register(_dgseg_test_hwm)
"""
_RUN_CLI = _HWM_PRELUDE + """
import runpy, sys
sys.argv = ["dgseg", *sys.argv[1:]]
runpy.run_module("napari_dgseg.cli", run_name="__main__", alter_sys=True)
"""


def _peak_bytes(hwm_path: Path, usage) -> int:
    """The child's peak RSS: its own ``VmHWM`` where Linux gives one, else ``ru_maxrss``."""
    if hwm_path.is_file() and hwm_path.read_text().strip():
        return int(hwm_path.read_text())
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_cli(*args: str, env: dict[str, str] | None = None, tmp: Path) -> tuple[int, str, str, int]:
    """Run ``python -m napari_dgseg.cli ARGS``; return (exit code, stdout, stderr, peak RSS bytes).

    ``os.wait4`` gives the resource usage of exactly this child (``RUSAGE_CHILDREN`` would be
    the maximum over every child the test process ever waited for).
    """
    src = str(Path(napari_dgseg.__file__).resolve().parents[1])
    hwm_path = tmp / "child.hwm"
    hwm_path.unlink(missing_ok=True)
    child_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src,
                     DGSEG_TEST_HWM=str(hwm_path), **(env or {}))
    out_path, err_path = tmp / "child.out", tmp / "child.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _RUN_CLI, *args],
                                stdout=out, stderr=err, env=child_env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out_path.read_text(), err_path.read_text(), _peak_bytes(hwm_path, usage)


def assert_one_line_exit(rc: int, err: str, peak: int, *patterns: str) -> None:
    lines = err.strip().splitlines()
    assert rc != 0, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for p in patterns:
        assert p in lines[0], (p, lines[0])
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e6:.0f} MB"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def tiny_path(tiny_bundle, tmp_path) -> Path:
    return tmp_path / "tiny.dgseg"


@pytest.fixture(scope="module")
def _bomb_dir(tmp_path_factory) -> Path:
    """Hostile bundles built once per module from a tiny U-Net bundle (tests copy them)."""
    from napari_dgseg.core.registry import get_family

    tmp_path = tmp_path_factory.mktemp("bombs")
    torch.manual_seed(0)
    model = get_family("unet").build_model({"num_classes": 2, "widths": [8, 16, 32]})
    tiny_path = Bundle.create(model, "unet", model.config, name="tiny",
                              class_names=["background", "nucleus"]).save(tmp_path / "tiny.dgseg")
    _build_bombs(tiny_path, tmp_path)
    return tmp_path


@pytest.fixture
def bombs(_bomb_dir) -> dict[str, Path]:
    """The hostile bundles, by name (shared: copy one before moving or changing it)."""
    return {p.stem: p for p in _bomb_dir.glob("*.dgseg") if p.stem != "tiny"}


def _build_bombs(tiny_path: Path, tmp_path: Path) -> dict[str, Path]:
    files = members(tiny_path)
    real = [(n, *deflated(b)) for n, b in files.items()]
    stream, size = deflate_bomb(15_000_000)  # 3.87 GB of zeros in 24 MB
    assert len(stream) < 25_000_000 and size > 3_800_000_000
    out = {}
    # a tensor member that unpacks to 3.9 GB (honest size, in a small archive)
    out["zip_bomb"] = write_raw_zip(
        tmp_path / "zip_bomb.dgseg",
        [m for m in real if m[0] != WEIGHTS] + [(WEIGHTS, stream, 8, 0, size)])
    # the same stream behind a header that claims 1000 bytes
    out["lying_header"] = write_raw_zip(
        tmp_path / "lying_header.dgseg",
        [m for m in real if m[0] != WEIGHTS] + [(WEIGHTS, stream, 8, 0, 1000)])
    # the manifest a 16 MB JSON document (one long string) that deflates to 16 kB
    big = b'{"schema": "' + b"0" * (16 << 20) + b'"}'
    out["json_bomb"] = write_raw_zip(
        tmp_path / "json_bomb.dgseg", [m for m in real if m[0] != MANIFEST]
        + [(MANIFEST, *deflated(big))])
    deep = b"[" * 200_000 + b"]" * 200_000  # 400 kB, deflates to almost nothing
    out["deep_json"] = rezip(tmp_path / "deep_json.dgseg", {**files, MANIFEST: deep})
    out["huge_config"] = with_manifest(
        tiny_path, tmp_path / "huge_config.dgseg",
        lambda m: m["config"].update(widths=[60000, 60000, 60000]))
    out["absurd_config"] = with_manifest(
        tiny_path, tmp_path / "absurd_config.dgseg", lambda m: m["config"].update(widths=[8, 16, 10**12]))
    out["manifest_list"] = rezip(tmp_path / "manifest_list.dgseg", {**files, MANIFEST: b"[1, 2, 3]"})
    bad_name = "../evil.safetensors"
    out["dotdot"] = with_manifest(tiny_path, tmp_path / "dotdot.dgseg",
                                  lambda m: m["files"].update({bad_name: "0" * 64}))
    with zipfile.ZipFile(out["dotdot"], "a") as zf:
        zf.writestr(bad_name, files[WEIGHTS])
    return out


# ----------------------------------------------------------------------------- archives
def test_deflate_bomb_builder_is_a_real_stream():
    stream, size = deflate_bomb(1003)
    assert zlib.decompressobj(-15).decompress(stream) == bytes(size)


@pytest.mark.parametrize(("case", "patterns"), [
    ("zip_bomb", ["weights.safetensors", "would unpack to 3,870,000,001 bytes", "zip bomb"]),
    ("lying_header", ["weights.safetensors", "damaged"]),
    ("json_bomb", ["bundle.json", "is 16,777,230 bytes, more than the 4,194,304 allowed"]),
    ("deep_json", ["bundle.json", "nests 200000 levels deep"]),
    ("huge_config", ["network of", "more than the 400,000,000 allowed"]),
    ("absurd_config", ["'widths'", "beyond the limit 65536"]),
    ("manifest_list", ["unknown bundle schema 'list'"]),
    ("dotdot", ["'../evil.safetensors'", "path separator"]),
])
def test_hostile_bundle_refused_in_one_line(bombs, case, patterns):
    one_line_refusal(bombs[case], *patterns)


def test_too_many_members_and_unsafe_names(tiny_path, tmp_path):
    files = members(tiny_path)
    many = {**files, **{f"x{i}.safetensors": b"" for i in range(MAX_BUNDLE_MEMBERS)}}
    one_line_refusal(rezip(tmp_path / "many.dgseg", many), f"more than the {MAX_BUNDLE_MEMBERS}")
    for name, why in [("/abs.safetensors", "path separator"), ("a\\b.safetensors", "separator"),
                      ("C:w.safetensors", "drive letter"), ("a..b.safetensors", "'..'")]:
        path = rezip(tmp_path / "odd.dgseg", {**files, name: b""})
        one_line_refusal(path, repr(name), why)


def test_lying_header_never_reads_past_the_declared_size(tiny_path, tmp_path):
    """A member whose deflate stream is longer than its header says stops at the declared size."""
    from napari_dgseg.core.bundle import _read_member

    stream, _ = deflate_bomb(4000)  # 1 MB of zeros
    path = write_raw_zip(tmp_path / "lie.zip", [("a.safetensors", stream, 8, 0, 10)])
    with zipfile.ZipFile(path) as zf, pytest.raises(BundleError, match="damaged"):
        _read_member(zf, zf.getinfo("a.safetensors"), "lie.zip")


def test_json_limits_direct():
    assert json_depth('{"a": "[[[[", "b": [[1], {"c": []}]}') == 4
    assert json_depth('["\\"[[", 1]') == 1
    with pytest.raises(InputError, match="nests 100 levels"):
        load_json_bounded(b"[" * 100 + b"]" * 100, "x.json")
    assert load_json_bounded(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, "x.json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_json_bounded(b'{"a": 1' + b"9" * 5000 + b"}", "x.json")  # int digit limit
    with pytest.raises(InputError, match="more than the 10 allowed"):
        load_json_bounded(b"[" + b"0," * 20 + b"0]", "x.json", max_bytes=10)


@pytest.mark.parametrize("field,value", [("config", [1]), ("classes", {"a": 1}),
                                         ("name", 5), ("files", "x")])
def test_manifest_fields_of_the_wrong_type(tiny_path, tmp_path, field, value):
    path = with_manifest(tiny_path, tmp_path / "t.dgseg", lambda m: m.update({field: value}))
    one_line_refusal(path, MANIFEST, repr(field))


# ----------------------------------------------------------------------------- weights
def _with_weights(tiny_bundle, tmp_path: Path, edit, name: str) -> Path:
    model = tiny_bundle.model
    with torch.no_grad():
        edit(dict(model.named_parameters()))
    bundle = Bundle.create(model, "unet", model.config, name=name,
                           class_names=list(tiny_bundle.class_names))
    return bundle.save(tmp_path / f"{name}.dgseg")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_weights_refused(tiny_bundle, tmp_path, bad):
    def spoil(params):
        next(iter(params.values()))[0].fill_(bad)

    path = _with_weights(tiny_bundle, tmp_path, spoil, "nan")
    one_line_refusal(path, "weights.safetensors holds NaN or infinite values", "Re-train")


def test_wrong_dtype_and_shape_refused(tiny_path, tmp_path):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    files = members(tiny_path)
    state = st_load(files[WEIGHTS])
    key = sorted(k for k, v in state.items() if v.ndim >= 1 and v.is_floating_point())[0]
    for label, tensor in [("dtype", state[key].double()), ("shape", state[key][:1])]:
        spoiled = dict(state, **{key: tensor})
        blob = st_save(spoiled)
        manifest = json.loads(files[MANIFEST])
        manifest["files"][WEIGHTS] = hashlib.sha256(blob).hexdigest()
        path = rezip(tmp_path / f"{label}.dgseg",
                     {**files, WEIGHTS: blob, MANIFEST: json.dumps(manifest).encode()})
        one_line_refusal(path, "do not fit the 'unet' config", repr(key))


# ----------------------------------------------------------------------------- the bank
def _bank(n: int = 3, d: int = 32) -> dict[str, torch.Tensor]:
    return {"hist": torch.full((n, 512), 0.04), "embedding": torch.ones(n, d) / d**0.5,
            "mean": torch.tensor([[60.0, 10.0, -5.0]] * n), "std": torch.ones(n, 3) * 8,
            "gris": torch.tensor([0]), "source_index": torch.arange(n)}


@pytest.mark.parametrize(("spoil", "pattern"), [
    (lambda b: b["std"].zero_(), "zero or negative colour std"),
    (lambda b: b["mean"].fill_(float("nan")), None),  # refused at load: NaN in a tensor file
    (lambda b: b.update(hist=torch.zeros(3, 7)), "hist of shape [3, 7]"),
    (lambda b: b.update(gris=torch.tensor([9])), "GRIS index [9]"),
    (lambda b: b.pop("std"), "lacks ['std']"),
    (lambda b: b.update(embedding=torch.ones(3, 5)), "5-value embeddings"),
])
def test_bad_bank_refused_not_an_empty_mask(tiny_bundle, tmp_path, spoil, pattern):
    bank = _bank()
    spoil(bank)
    tiny_bundle.set_extra("bank", bank)
    path = tiny_bundle.save(tmp_path / "banked.dgseg")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    image[:, :32] = (150, 60, 160)  # tissue-coloured half, so DCIN has work to do
    with pytest.raises(BundleError) as info:
        load_bundle(path).predict(image, dcin="full", device="cpu")
    msg = str(info.value)
    assert "\n" not in msg
    assert ("NaN" in msg) if pattern is None else (pattern in msg and "dgseg bank" in msg)


# ----------------------------------------------------------------------------- names
def test_bundle_name_is_sanitised_as_a_file_name(tmp_path):
    from napari_dgseg.core.train.adapt import next_version_path

    for hostile in ["../../etc/passwd", "/abs/path", "a\\b", "C:evil", "..", "", "x" * 300]:
        path = next_version_path(hostile, tmp_path)
        assert path.parent == tmp_path, (hostile, path)
        assert "/" not in path.name and "\\" not in path.name and ".." not in path.name
        assert len(path.name) < 130
    assert safe_file_stem("nuclei-unet") == "nuclei-unet"
    assert safe_file_stem("../../x y") == "x_y"


def test_unsafe_extra_file_names_refused(tiny_bundle):
    for bad in ["../replay", "a/b", "/etc/x", "c:\\x"]:
        with pytest.raises(BundleError, match="tensor file name"):
            tiny_bundle.set_extra(bad, {"x": torch.zeros(1)})


# ----------------------------------------------------------------------------- damage
def _damaged(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    if rng.random() < 0.5:
        cut = int(rng.integers(1, len(data)))
        return f"truncated at {cut}", data[:cut]
    pos = int(rng.integers(0, len(data)))
    bit = int(rng.integers(0, 8))
    flipped = bytearray(data)
    flipped[pos] ^= 1 << bit
    return f"bit {bit} of byte {pos} flipped", bytes(flipped)


def test_random_bit_flips_and_truncations_of_a_valid_bundle(tiny_path):
    """Thirty seeded damages: each is refused in one line or (harmless byte) loads intact."""
    data = tiny_path.read_bytes()
    rng = np.random.default_rng(18)
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(30):
        what, damaged = _damaged(data, rng)
        try:
            manifest, tensors = read_bundle_bytes(damaged, "damaged.dgseg")
        except BundleError as exc:
            assert "\n" not in str(exc), what
            outcomes["refused"] += 1
            continue
        # a flip in a header field nobody checks (a timestamp): the content is intact
        assert tensors[WEIGHTS].keys() == load_bundle(tiny_path).state_dict().keys(), what
        outcomes["loaded"] += 1
    assert outcomes["refused"] >= 20, outcomes


# ----------------------------------------------------------------------------- images
def _png_bytes(shape=(64, 64, 3)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def bomb_png(path: Path, side: int = 40_000) -> Path:
    """A PNG whose header claims ``side x side`` grey pixels, with a tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(side + 1) * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_png_one_line(tmp_path):
    from napari_dgseg.core.slide import open_image

    with pytest.raises(ImageReadError) as info:
        open_image(bomb_png(tmp_path / "bomb.png"))
    assert "\n" not in str(info.value) and "bomb.png" in str(info.value)
    assert "tiled TIFF" in str(info.value)


def test_png_over_the_memory_budget_one_line(tmp_path, monkeypatch):
    from napari_dgseg.core.slide import open_image

    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "1M")
    with pytest.raises(InputError, match="decoding 2000 x 2000 pixels needs about"):
        open_image(bomb_png(tmp_path / "big.png", side=2000))


@pytest.mark.parametrize("seed", range(6))
def test_truncated_or_flipped_png_one_line(tmp_path, seed):
    from napari_dgseg.core.slide import open_image

    what, damaged = _damaged(_png_bytes(), np.random.default_rng(seed))
    path = tmp_path / "bad.png"
    path.write_bytes(damaged)
    try:
        opened = open_image(path)
    except ImageReadError as exc:
        assert "\n" not in str(exc) and "bad.png" in str(exc), what
        return
    assert opened.full.shape[:2] == (64, 64), what  # a flip in pixel data: still an image


def _tiled_tiff(path: Path, side: int = 512, width: int | None = None) -> Path:
    """A zlib-compressed RGB TIFF in 128-pixel tiles."""
    import tifffile

    shape = (side, width or side, 3)
    image = np.random.default_rng(2).integers(0, 255, shape, dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(128, 128), compression="zlib", photometric="rgb")
    return path


def _corrupt_last_tile(path: Path) -> Path:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    data = bytearray(path.read_bytes())
    data[offset: offset + count] = bytes(range(256)) * (count // 256) + bytes(count % 256)
    path.write_bytes(bytes(data))
    return path


def test_corrupt_tiff_tile_fails_in_one_line_during_inference(tiny_bundle, tmp_path):
    from napari_dgseg.core.slide import open_image

    path = _corrupt_last_tile(_tiled_tiff(tmp_path / "slide.tif", 256, 1536))
    # 1536 px wide: two dask chunks (1024 px); opening probes the first, the corrupt tile is
    # in the second and is first decoded by tiled inference
    with open_image(path) as opened:
        with pytest.raises(ImageReadError) as info:
            tiny_bundle.predict(opened.full, device="cpu", tile=256, dcin="none")
    assert "\n" not in str(info.value) and "slide.tif" in str(info.value)


@pytest.mark.parametrize("seed", range(4))
def test_truncated_or_flipped_tiff_one_line(tmp_path, seed):
    from napari_dgseg.core.slide import open_image

    data = _tiled_tiff(tmp_path / "src.tif", side=256).read_bytes()
    what, damaged = _damaged(data, np.random.default_rng(100 + seed))
    path = tmp_path / "bad.tif"
    path.write_bytes(damaged)
    try:
        with open_image(path) as opened:
            np.asarray(opened.full)
    except ImageReadError as exc:
        assert "\n" not in str(exc) and "bad.tif" in str(exc), what


# ----------------------------------------------------------------------------- memory
def test_huge_image_refused_before_allocation(tiny_bundle):
    import dask.array as da

    from napari_dgseg.core.inference import estimate_inference_bytes

    slide = da.zeros((100_000, 100_000, 3), dtype=np.uint8, chunks=(4096, 4096, 3))
    with pytest.raises(InputError) as info:
        tiny_bundle.predict(slide, device="cpu", memory_budget=8 << 30)
    msg = str(info.value)
    assert "\n" not in msg and "100000 x 100000" in msg and "region" in msg
    assert "DGSEG_MEMORY_BUDGET" in msg
    assert estimate_inference_bytes(100_000, 100_000, 2) > 8 << 30
    # a normal image passes the same budget
    assert estimate_inference_bytes(2048, 2048, 2) < 8 << 30


def test_memory_budget_env_var(monkeypatch, tiny_bundle):
    from napari_dgseg.core.limits import memory_budget

    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "2G")
    assert memory_budget() == (2 << 30, "DGSEG_MEMORY_BUDGET")
    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "off")
    assert memory_budget()[0] is None
    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "lots")
    with pytest.raises(InputError, match="not a size"):
        memory_budget()
    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "100k")
    with pytest.raises(InputError, match="segmenting the 64 x 64 image"):
        tiny_bundle.predict(np.zeros((64, 64, 3), np.uint8), device="cpu")


# ----------------------------------------------------------------------------- evaluate
def test_semantic_scores_refuse_instance_sized_ids():
    from napari_dgseg.core.metrics import instance_scores, semantic_scores

    gt = np.zeros((32, 32), np.int64)
    gt[4:10, 4:10] = 2**31 - 1
    with pytest.raises(InputError, match="--instance"):
        semantic_scores(gt, gt)
    assert instance_scores(gt, gt)["pq"] == pytest.approx(1.0)  # handled by relabelling


# ----------------------------------------------------------------------------- listing
def test_broken_bundles_listed_with_reason_others_load(bombs, tiny_path, monkeypatch, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("zip_bomb", "json_bomb", "deep_json", "manifest_list", "dotdot"):
        shutil.copy(bombs[name], folder / f"{name}.dgseg")
    tiny_path.rename(folder / "good.dgseg")
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(folder))
    rows = {r["name"]: r for r in list_bundles() if r["where"] == "user"}
    assert not rows["good"].get("broken") and rows["good"]["family"] == "unet"
    for name in ("zip_bomb", "json_bomb", "deep_json", "manifest_list", "dotdot"):
        assert rows[name]["broken"] and "\n" not in rows[name]["broken"], name
    assert load_bundle("good").name == "tiny"


# ----------------------------------------------------------------------------- the real CLI
_DRIVER = """
import contextlib, io, json, os, sys
from napari_dgseg.cli import main
results = []
for argv, env in json.loads(sys.argv[1]):
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # would have been a traceback
            rc = "uncaught " + type(exc).__name__ + ": " + str(exc)[:200]
    for key in env:
        del os.environ[key]
    results.append({"argv": argv, "rc": rc, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
"""


def run_cli_batch(cases: list[tuple[list[str], dict[str, str]]], tmp: Path):
    """Run many commands through ``napari_dgseg.cli.main`` in ONE child (one torch import).

    Returns the per-command results and the child's peak RSS over all of them.
    """
    src = str(Path(napari_dgseg.__file__).resolve().parents[1])
    hwm_path = tmp / "batch.hwm"
    hwm_path.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src, DGSEG_TEST_HWM=str(hwm_path))
    out_path, err_path = tmp / "batch.out", tmp / "batch.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _HWM_PRELUDE + _DRIVER, json.dumps(cases)],
                                stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err_path.read_text()[-2000:]
    return json.loads(out_path.read_text()), _peak_bytes(hwm_path, usage)


def test_cli_hostile_inputs_one_line_each_bounded_memory(bombs, tiny_bundle, tiny_path, tmp_path):
    """Every hostile input through ``dgseg``'s main: exit 2, one line naming the file, < 1 GB.

    All commands run in one child process (one torch import instead of twenty); the peak RSS is
    the maximum over all of them. ``dgseg models`` on a folder with two broken bundles lists
    them with their reasons and still lists the good one.
    """
    import tifffile

    def spoil(params):
        next(iter(params.values()))[0].fill_(float("nan"))

    nan = _with_weights(tiny_bundle, tmp_path, spoil, "nan")
    data = tiny_path.read_bytes()
    (tmp_path / "half.dgseg").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x10
    (tmp_path / "flipped.dgseg").write_bytes(bytes(flipped))
    bomb = bomb_png(tmp_path / "bomb.png")
    tif = _corrupt_last_tile(_tiled_tiff(tmp_path / "slide.tif", 256, 1536))
    img = tmp_path / "img.png"
    img.write_bytes(_png_bytes((96, 96, 3)))
    gt = np.zeros((64, 64), np.uint32)
    gt[8:20, 8:20] = 2_000_000_000
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    out = str(tmp_path / "out")
    predict = ["predict", "--model", str(tiny_path), "--out", out, "--quiet"]
    cases = [(["info", str(bombs[name])], {}, bombs[name].name) for name in sorted(bombs)]
    cases += [
        (["info", str(nan)], {}, "NaN"),
        (["info", str(tmp_path / "half.dgseg")], {}, "half.dgseg"),
        (["info", str(tmp_path / "flipped.dgseg")], {}, "flipped.dgseg"),
        ([*predict, str(bomb)], {}, "bomb.png"),
        ([*predict, "--tile", "256", "--dcin", "none", str(tif)], {}, "slide.tif"),
        ([*predict, str(img)], {"DGSEG_MEMORY_BUDGET": "64k"}, "DGSEG_MEMORY_BUDGET"),
        (["evaluate", "--task", "semantic", str(tmp_path / "gt.tif"), str(tmp_path / "gt.tif")], {},
         "--instance"),
    ]
    folder = tmp_path / "models"  # a models folder with two broken bundles and a good one
    folder.mkdir()
    shutil.copy(bombs["zip_bomb"], folder / "bomb.dgseg")
    shutil.copy(bombs["deep_json"], folder / "deep.dgseg")
    shutil.copy(tiny_path, folder / "good.dgseg")
    listing = (["models"], {"DGSEG_MODEL_DIR": str(folder)})
    results, peak = run_cli_batch([(argv, env) for argv, env, _ in cases] + [listing], tmp_path)
    models = results.pop()
    assert models["rc"] == 0 and models["err"] == "", models
    rows = {r["name"]: r for r in json.loads(models["out"])["models"] if r["where"] == "user"}
    assert "zip bomb" in rows["bomb"]["broken"] and "nests" in rows["deep"]["broken"]
    assert "broken" not in rows["good"] and rows["good"]["family"] == "unet"
    for (argv, _, pattern), res in zip(cases, results, strict=True):
        lines = res["err"].strip().splitlines()
        batch = argv[0] == "predict"  # a batch goes on, reports the file under "failed", status 1
        assert res["rc"] == (1 if batch else 2), (argv, res)
        assert len(lines) == 1 and "Traceback" not in res["err"], (argv, res["err"])
        assert lines[0].startswith(f"dgseg {argv[0]}: error: ") and pattern in lines[0], lines
        if batch:
            (failed,) = json.loads(res["out"])["failed"]
            assert pattern in failed["error"] or pattern in failed["input"], (argv, failed)
        else:
            assert res["out"] == "", argv
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e6:.0f} MB"


def test_cli_entry_point_zip_bomb(bombs, tmp_path):
    """The real ``python -m napari_dgseg.cli`` process on a zip bomb."""
    rc, out, err, peak = run_cli("info", str(bombs["zip_bomb"]), tmp=tmp_path)
    assert_one_line_exit(rc, err, peak, "dgseg info: error:", "zip_bomb.dgseg", "zip bomb")
    assert out == ""


@pytest.mark.slow
def test_cli_entry_point_models_lists_broken_bundles(bombs, tiny_path, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(bombs["zip_bomb"], folder / "bomb.dgseg")
    shutil.copy(bombs["deep_json"], folder / "deep.dgseg")
    tiny_path.rename(folder / "good.dgseg")
    rc, out, err, peak = run_cli("models", env={"DGSEG_MODEL_DIR": str(folder)}, tmp=tmp_path)
    assert rc == 0 and err.strip() == "" and peak < PEAK_RSS_LIMIT, err
    rows = {r["name"]: r for r in json.loads(out)["models"] if r["where"] == "user"}
    assert "zip bomb" in rows["bomb"]["broken"] and "nests" in rows["deep"]["broken"]
    assert "broken" not in rows["good"] and rows["good"]["family"] == "unet"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["json_bomb", "deep_json", "huge_config", "lying_header"])
def test_cli_entry_point_each_bundle_bomb(bombs, tmp_path, case):
    rc, out, err, peak = run_cli("info", str(bombs[case]), tmp=tmp_path)
    assert_one_line_exit(rc, err, peak, "dgseg info: error:", bombs[case].name)


@pytest.mark.slow
def test_cli_entry_point_predict_bomb_png_and_corrupt_tiff(tiny_path, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png")
    rc, _, err, peak = run_cli("predict", "--model", str(tiny_path), str(bomb), "--out",
                               str(tmp_path / "out"), "--quiet", tmp=tmp_path)
    assert_one_line_exit(rc, err, peak, "bomb.png")
    tif = _corrupt_last_tile(_tiled_tiff(tmp_path / "slide.tif", 256, 1536))
    rc, _, err, peak = run_cli("predict", "--model", str(tiny_path), str(tif), "--out",
                               str(tmp_path / "out"), "--quiet", "--tile", "256",
                               "--dcin", "none", tmp=tmp_path)
    assert_one_line_exit(rc, err, peak, "slide.tif")


@pytest.mark.slow
def test_cli_entry_point_evaluate_huge_label_id(tmp_path):
    import tifffile

    gt = np.zeros((64, 64), np.uint32)
    gt[8:20, 8:20] = 2_000_000_000
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", gt)
    rc, _, err, peak = run_cli("evaluate", "--task", "semantic", str(tmp_path / "pred.tif"),
                               str(tmp_path / "gt.tif"), tmp=tmp_path)
    assert_one_line_exit(rc, err, peak, "--instance")
    # asked for (no note), or found from ids no class map has (one info line on stderr)
    for task in (["--instance"], ["--task", "instance"], [], ["--task", "auto"]):
        rc, out, err, peak = run_cli("evaluate", str(tmp_path / "pred.tif"),
                                     str(tmp_path / "gt.tif"), *task, tmp=tmp_path)
        assert rc == 0 and peak < PEAK_RSS_LIMIT, err
        assert json.loads(out)["mean"]["pq"] == pytest.approx(1.0)
        if task in ([], ["--task", "auto"]):
            (line,) = err.splitlines()
            assert line.startswith("dgseg evaluate: scoring as instance: ")
            assert line.endswith("Pass --task semantic to score as semantic.")
        else:
            assert err == ""


def test_errors_are_user_errors():
    assert issubclass(BundleError, DgsegError) and issubclass(ImageReadError, DgsegError)


# ----------------------------------------------------------------------------- napari
@pytest.mark.gui
def test_model_picker_shows_broken_bundles_greyed_with_reason(bombs, tiny_path, tmp_path,
                                                             monkeypatch, qtbot):
    """The napari model picker lists a broken bundle disabled, its reason as tooltip."""
    from qtpy.QtCore import Qt

    from napari_dgseg._napari.widgets.model_picker import ModelPicker

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(bombs["zip_bomb"], folder / "bomb.dgseg")
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(folder))
    picker = ModelPicker(autoload=False)
    qtbot.addWidget(picker)
    labels = [picker.combo.itemText(i) for i in range(picker.combo.count())]
    assert "bomb (broken)" in labels and any("nuclei-unet" in t for t in labels)
    i = labels.index("bomb (broken)")
    assert "zip bomb" in picker.combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
    assert not picker.combo.model().item(i).isEnabled()
    assert picker.combo.currentIndex() != i  # a good model stays selected


@pytest.mark.parametrize("ext", [".tif", ".npy", ".png"])
def test_label_files_checked_against_the_budget_before_decoding(tmp_path, monkeypatch, ext):
    """``evaluate``/training readers take the size from the header and refuse before decoding."""
    import tifffile
    from PIL import Image

    from napari_dgseg.core.data.datasets import read_labels

    labels = np.zeros((300, 300), np.uint8)
    path = tmp_path / f"labels{ext}"
    {".tif": lambda: tifffile.imwrite(path, labels), ".npy": lambda: np.save(path, labels),
     ".png": lambda: Image.fromarray(labels).save(path)}[ext]()
    assert read_labels(path).shape == (300, 300)
    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "10k")
    with pytest.raises(InputError) as info:
        read_labels(path)
    assert "\n" not in str(info.value) and path.name in str(info.value)
    assert "DGSEG_MEMORY_BUDGET" in str(info.value)
