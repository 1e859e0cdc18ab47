"""dask.distributed batch: same outputs as one process, loopback binding, verified bundle bytes.

The cluster tests start real worker processes on 127.0.0.1 (marker ``distributed``; they run in
CI: the dev extra installs ``distributed``). Address, TLS and hash checks are unit-level.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread, imsave

from conftest import disks_image
from dist_blocks import StripPlan, segment_strip
from napari_dgseg.cli import main
from napari_dgseg.core import distributed as dist
from napari_dgseg.core.bundle import load_bundle
from napari_dgseg.core.errors import BundleError, CancelledError, InputError
from napari_dgseg.core.labels_io import read_labels

pytest.importorskip("distributed", reason="the 'distributed' extra (installed by the dev extra)")


def _images(folder: Path, n: int = 2, size: int = 112) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        img, _ = disks_image(size + 16 * i, seed=20 + i)
        imsave(folder / f"img{i}.png", img, check_contrast=False)
    return folder


def _without_timing(summary: dict) -> dict:
    for row in summary["outputs"]:
        row.pop("seconds")
    return summary


# ------------------------------------------------------------------------ unit level: addresses
@pytest.mark.parametrize("address", ["nonsense", "tcp://host", "http://1.2.3.4:8786",
                                     "tcp://h:99999", "tcp://a b:1", ""])
def test_malformed_scheduler_address_is_one_input_error(address):
    with pytest.raises(InputError) as err:
        dist.parse_address(address)
    assert "\n" not in str(err.value)


def test_malformed_scheduler_on_the_cli_is_one_line(tiny_bundle, tmp_path, capsys):
    imgs = _images(tmp_path / "in", n=1)
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--out", str(tmp_path / "o"),
               "--scheduler", "tcp//nowhere", "--quiet", str(imgs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "SCHEME://HOST:PORT" in err[0]
    assert not (tmp_path / "o").exists()


def test_remote_tcp_warns_in_one_line_loopback_does_not(caplog):
    with caplog.at_level(logging.WARNING, logger="napari_dgseg.distributed"):
        addr, security = dist.connection_settings("tcp://10.20.30.40:8786")
    assert addr == "tcp://10.20.30.40:8786" and security is None
    [record] = caplog.records
    assert "not a loopback address" in record.getMessage() and "tls://" in record.getMessage()
    assert "\n" not in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="napari_dgseg.distributed"):
        dist.connection_settings("tcp://127.0.0.1:8786")
        dist.connection_settings("localhost:8786")
        dist.connection_settings("tcp://[::1]:8786")
    assert caplog.records == []


def test_tls_takes_its_security_from_the_dask_config(tmp_path):
    import dask

    files = {}
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("placeholder, never opened by this test\n")
        files[name] = str(tmp_path / name)
    with dask.config.set({"distributed.comm.tls.ca-file": files["ca.pem"],
                          "distributed.comm.tls.client.cert": files["client.pem"],
                          "distributed.comm.tls.client.key": files["client.key"]}):
        addr, security = dist.connection_settings("tls://scheduler.example.org:8786")
    assert addr == "tls://scheduler.example.org:8786"
    assert security.tls_ca_file == files["ca.pem"]
    assert security.tls_client_cert == files["client.pem"]
    assert security.tls_client_key == files["client.key"]
    with dask.config.set({"distributed.comm.tls.ca-file": None,
                          "distributed.comm.tls.client.cert": None}):
        with pytest.raises(InputError, match="distributed.comm.tls.ca-file") as err:
            dist.connection_settings("tls://scheduler.example.org:8786")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------- unit level: bundle bytes
def test_payload_with_a_wrong_hash_is_refused_in_one_line(tiny_bundle):
    payload = dist.bundle_payload(tiny_bundle)
    assert payload.sha256 == tiny_bundle.sha256
    flipped = bytearray(payload.data)
    flipped[len(flipped) // 2] ^= 0xFF
    bad = dist.BundlePayload(payload.name, payload.path, payload.sha256, bytes(flipped))
    with pytest.raises(BundleError, match="does not match its sha256") as err:
        dist.load_payload(bad)
    assert "\n" not in str(err.value)
    loaded = dist.load_payload(payload)
    assert loaded.sha256 == payload.sha256 and str(loaded.path) == payload.path
    assert dist.load_payload(payload) is loaded  # cached by hash: loaded once


def test_bundle_changed_on_disk_after_loading_is_refused(tiny_bundle, tmp_path):
    bundle = load_bundle(tmp_path / "tiny.dgseg")
    other = load_bundle(tmp_path / "tiny.dgseg")
    other.manifest["description"] = "changed"
    other.save(tmp_path / "tiny.dgseg", overwrite=True)
    with pytest.raises(BundleError, match="changed on disk"):
        dist.bundle_payload(bundle)


# ------------------------------------------------------------------------- on a local cluster
_ENV_BEFORE: dict[str, str] = {}
_ENV_AFTER: dict[str, str] = {}


@pytest.fixture(scope="module")
def client():
    import distributed

    _ENV_BEFORE.update(os.environ)
    cluster = dist.local_cluster(2, 1)
    _ENV_AFTER.update(os.environ)
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.mark.distributed
def test_local_cluster_binds_to_loopback_only(client):
    info = client.scheduler_info()
    assert info["address"].startswith("tcp://127.0.0.1:")
    assert len(info["workers"]) == 2
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
    # the HTTP servers (health/metrics) of the scheduler and of every worker: loopback too
    assert client.cluster.scheduler.http_server.address == "127.0.0.1"
    http = client.run(lambda dask_worker: dask_worker.http_server.address)
    assert set(http.values()) == {"127.0.0.1"}
    assert dist.describe_cluster(client)["workers"] == 2


@pytest.mark.distributed
def test_workers_keep_the_default_malloc_trim_and_our_environment_is_restored(client):
    trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(trim.values()) == {_ENV_BEFORE.get("MALLOC_TRIM_THRESHOLD_")}
    # the nanny's pre-spawn variables do not leak into the client process
    for key in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"):
        assert _ENV_AFTER.get(key) == _ENV_BEFORE.get(key), key


@pytest.mark.distributed
def test_worker_refuses_bytes_whose_hash_does_not_match(client, tiny_bundle):
    payload = dist.bundle_payload(tiny_bundle)
    bad = dist.BundlePayload(payload.name, payload.path, "0" * 64, payload.data)
    future = client.submit(dist.load_payload, bad, pure=False)
    with pytest.raises(BundleError, match="does not match its sha256") as err:
        future.result()
    assert "\n" not in str(err.value)


@pytest.mark.distributed
def test_block_executor_equals_in_process_and_loads_the_bundle_once_per_worker(
    client, tiny_bundle, tmp_path
):
    img, _ = disks_image(160, seed=5)
    np.save(tmp_path / "image.npy", img)
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int32,
                                    shape=img.shape[:2])
    del out
    plan = StripPlan(str(tmp_path / "image.npy"), str(tmp_path / "labels.npy"), strip=32)
    seen = []
    executor = dist.DaskBlockExecutor(client, tiny_bundle, block_fn=segment_strip)
    executor(plan, plan.block_ids(), lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    expected = np.zeros(img.shape[:2], np.int32)
    local = load_bundle(tmp_path / "tiny.dgseg")
    for b in plan.block_ids():
        y0, y1 = b * 32, min((b + 1) * 32, 160)
        expected[y0:y1] = local.predict(img[y0:y1], tile=64, overlap=16, device="cpu",
                                        dcin="none", rescale="off").labels
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)
    # each worker parsed the bundle at most once, whatever the number of blocks it ran
    loads = client.run(lambda: list(dist.LOADS))
    assert all(v.count(tiny_bundle.sha256) <= 1 for v in loads.values())
    assert sum(v.count(tiny_bundle.sha256) for v in loads.values()) >= 1


@pytest.mark.distributed
def test_block_executor_raises_a_block_error_and_cancels(client, tiny_bundle, tmp_path):
    img, _ = disks_image(96, seed=6)
    np.save(tmp_path / "image.npy", img)
    del_ = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int32,
                                     shape=img.shape[:2])
    del del_
    failing = StripPlan(str(tmp_path / "image.npy"), str(tmp_path / "labels.npy"), 16,
                        fail_block=2)
    executor = dist.DaskBlockExecutor(client, tiny_bundle, block_fn=segment_strip)
    with pytest.raises(ValueError, match="block 2 failed on purpose"):
        executor(failing, failing.block_ids(), None)

    slow = StripPlan(str(tmp_path / "image.npy"), str(tmp_path / "slow.npy"), 8, delay=0.4)
    np.lib.format.open_memmap(slow.out, mode="w+", dtype=np.int32, shape=img.shape[:2]).flush()
    stop = threading.Event()

    def progress(done, total):
        if done >= 1:
            stop.set()

    executor = dist.DaskBlockExecutor(client, tiny_bundle, block_fn=segment_strip, cancel=stop)
    with pytest.raises(CancelledError):
        executor(slow, slow.block_ids(), progress)
    time.sleep(1.5)  # blocks already running may finish; nothing new may start
    done = len(list(tmp_path.glob("slow.npy.*.done")))
    assert 1 <= done < len(slow.block_ids())


@pytest.mark.distributed
def test_cli_workers_writes_what_the_single_process_run_writes(tiny_bundle, tmp_path, capsys):
    from test_wsi_stream import nuclei_slide, write_pyramid

    imgs = _images(tmp_path / "in", n=2)
    # a tiled pyramid is a lazy dask array: a worker must read it without its cluster
    write_pyramid(imgs / "slide.svs", nuclei_slide(192, 256, seed=3))
    model = str(tmp_path / "tiny.dgseg")
    common = ["predict", "--model", model, "--tile", "64", "--overlap", "16", "--probabilities",
              "--quiet", str(imgs)]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    single = _without_timing(json.loads(capsys.readouterr().out))
    assert main([*common, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    captured = capsys.readouterr()
    several = _without_timing(json.loads(captured.out))
    assert json.loads(json.dumps(single).replace(str(tmp_path / "one"), str(tmp_path / "two"))) \
        == several
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len(names) == 6 and "slide_labels.tif" in names
    for row in single["outputs"]:
        a, pa = read_labels(row["labels"])
        b, pb = read_labels(row["labels"].replace(str(tmp_path / "one"), str(tmp_path / "two")))
        np.testing.assert_array_equal(a, b)
        for prov in (pa, pb):
            prov.pop("seconds"), prov.pop("date")
        assert pa == pb
        import tifffile

        pr = row["probabilities"]
        np.testing.assert_array_equal(
            tifffile.imread(pr), tifffile.imread(pr.replace(str(tmp_path / "one"),
                                                            str(tmp_path / "two"))))


@pytest.mark.distributed
def test_cli_scheduler_uses_an_existing_cluster(client, tiny_bundle, tmp_path, capsys):
    imgs = _images(tmp_path / "in", n=1)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # fails on its worker
    address = client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--tile", "64", "--overlap",
               "16", "--quiet", "--out", str(tmp_path / "o"), "--scheduler", address, str(imgs)])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    # the bad input fails in one line and the batch goes on, exit status 1 (as in one process)
    assert rc == 1 and "warning" not in captured.err  # loopback: no warning
    [error] = captured.err.strip().splitlines()
    assert error.startswith("dgseg predict: error: ") and "broken.png" in error
    assert [f["input"] for f in summary["failed"]] == [str(imgs / "broken.png")]
    [row] = summary["outputs"]
    labels, _ = read_labels(row["labels"])
    img = imread(imgs / "img0.png")
    expected = load_bundle(tmp_path / "tiny.dgseg").predict(img, tile=64, overlap=16)
    np.testing.assert_array_equal(labels, expected.labels)


def test_unreachable_scheduler_is_one_line():
    with pytest.raises(InputError, match="cannot reach the dask scheduler") as err:
        dist.connect("tcp://127.0.0.1:9", timeout=1)
    assert "\n" not in str(err.value)


@pytest.mark.distributed
def test_slide_streamed_on_two_workers_equals_the_single_process_stream(client, tiny_bundle,
                                                                        tmp_path):
    import zarr

    from napari_dgseg.core.wsi import predict_slide
    from test_wsi_stream import nuclei_slide, write_pyramid

    slide = write_pyramid(tmp_path / "slide.svs", nuclei_slide(704, 896, blank_right=320))
    options = {"block_size": 256, "margin": 96, "outputs": ["labels", "probabilities"],
               "rescale": "off"}
    one = predict_slide(tiny_bundle, slide, tmp_path / "one.zarr", **options)
    seen = []
    executor = dist.DaskBlockExecutor(client, tiny_bundle)
    two = predict_slide(tiny_bundle, slide, tmp_path / "two.zarr", block_executor=executor,
                        progress=lambda done, total: seen.append((done, total)), **options)
    assert two["blocks_run"] == one["blocks_run"] > 1 and seen[-1] == (two["blocks"],) * 2
    for array in ("0", "1", "probabilities/0", "probabilities/1"):
        a = zarr.open_array(str(tmp_path / "one.zarr" / array), mode="r")[...]
        b = zarr.open_array(str(tmp_path / "two.zarr" / array), mode="r")[...]
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("flags", [["--workers", "2"], ["--precision", "bf16"]])
def test_streamed_zarr_output_refuses_flags_it_would_ignore(tiny_bundle, tmp_path, capsys, flags):
    imgs = _images(tmp_path / "in", n=1)
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--device", "cpu", "--out",
               str(tmp_path / "slide.zarr"), *flags, str(imgs / "img0.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--out" in err[0] and flags[0] in err[0]
    assert not (tmp_path / "slide.zarr").exists()
