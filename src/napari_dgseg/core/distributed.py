"""Segment many files, or the blocks of one slide, on a dask.distributed cluster.

* :func:`local_cluster` starts a ``LocalCluster`` of worker *processes* bound to ``127.0.0.1``
  only (scheduler, workers; the dashboard is off), so nothing on the network can reach it.
* :func:`connect` joins an existing scheduler: ``tls://`` takes its certificates from the dask
  configuration (:class:`distributed.security.Security`), a plain ``tcp://`` address that is not
  a loopback address is accepted with a one-line warning (the traffic is unencrypted and anyone
  who reaches the scheduler can run code on its workers), a malformed address is one
  :class:`~napari_dgseg.core.errors.InputError` line.
* Bundles travel as **verified bytes**: the client reads the bundle file and its sha256
  (:func:`bundle_payload`), scatters them to the workers once, and each worker checks the hash,
  parses the bytes in memory with the normal safe loader (zip + JSON + safetensors, never a
  pickle; :func:`napari_dgseg.core.bundle.read_bundle_bytes`) and keeps the loaded bundle in a
  per-process cache keyed by the hash (:func:`load_payload`), so each worker loads it once.
* :class:`DaskBlockExecutor` runs the blocks of a whole-slide plan on the workers
  (the ``block_executor(plan, block_ids, progress)`` interface of
  :func:`napari_dgseg.core.wsi.stream.predict_slide`); :func:`submit_with_bundle` runs any
  importable function ``fn(bundle, *args)`` on a worker (the CLI's per-file batch).

dask itself moves task arguments with pickle between the client, the scheduler and the workers:
whoever can talk to the scheduler can run code on the workers. That is why the local cluster
listens on the loopback interface only and a remote one should use ``tls://``; the bundle's own
path stays pickle-free and hash-checked (docs/distributed.md, docs/security.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from napari_dgseg.core.cancel import check_cancel
from napari_dgseg.core.errors import BundleError, InputError

log = logging.getLogger("napari_dgseg.distributed")

#: Address schemes :func:`connect` accepts.
SCHEMES = ("tcp", "tls")

#: Bundles one worker process keeps loaded (least recently used dropped first).
MAX_CACHED_BUNDLES = 4

#: Seconds :func:`connect` waits for the scheduler.
CONNECT_TIMEOUT = 20.0

_ADDRESS = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})/?$"
)


def require_distributed() -> Any:
    """Import and return the ``distributed`` package, or say in one line how to install it."""
    try:
        import distributed
    except ImportError:
        raise InputError(
            "dask.distributed is not installed; install it with "
            "`pip install 'napari-dgseg[distributed]'` (or `pip install distributed`)"
        ) from None
    return distributed


# ---------------------------------------------------------------------------------- addresses
@dataclass(frozen=True)
class SchedulerAddress:
    """A parsed scheduler address.

    Attributes
    ----------
    scheme : str
        ``tcp`` or ``tls``.
    host : str
        Host name or IP literal (IPv6 without brackets).
    port : int
    """

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(address: str) -> SchedulerAddress:
    """Parse ``[tcp|tls://]HOST:PORT``; one-line :class:`InputError` when it is not one.

    A missing scheme means ``tcp`` (dask's default).
    """
    text = str(address).strip()
    m = _ADDRESS.match(text)
    if m is None:
        raise InputError(
            f"scheduler address {address!r} is not SCHEME://HOST:PORT; give e.g. "
            "tls://scheduler.example.org:8786 or tcp://127.0.0.1:8786"
        )
    scheme = (m.group("scheme") or "tcp").lower()
    if scheme not in SCHEMES:
        raise InputError(
            f"scheduler address {address!r}: scheme {scheme!r} is not supported; use tls:// "
            "(encrypted) or tcp://"
        )
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise InputError(f"scheduler address {address!r}: port {port} is not in 1-65535")
    return SchedulerAddress(scheme, m.group("host").strip("[]"), port)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address (127/8, ::1).

    IP literals are checked directly; a name that does not resolve is not loopback.
    """
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def security_from_config() -> Any:
    """dask's :class:`~distributed.security.Security` built from the dask configuration.

    ``tls://`` needs at least the CA file and the client certificate
    (``distributed.comm.tls.ca-file``, ``distributed.comm.tls.client.cert`` and ``.key``, in a
    dask YAML file or ``DASK_DISTRIBUTED__COMM__TLS__...`` variables); otherwise one
    :class:`InputError` line says which keys to set.
    """
    distributed = require_distributed()
    security = distributed.security.Security()
    missing = [key for key, value in (("distributed.comm.tls.ca-file", security.tls_ca_file),
                                      ("distributed.comm.tls.client.cert", security.tls_client_cert))
               if not value]
    if missing:
        raise InputError(
            f"a tls:// scheduler needs TLS certificates in the dask configuration; set "
            f"{' and '.join(missing)} (and distributed.comm.tls.client.key) in "
            "~/.config/dask/distributed.yaml or DASK_DISTRIBUTED__COMM__TLS__* variables"
        )
    return security


def connection_settings(address: str) -> tuple[str, Any]:
    """The address to connect to and its ``security`` (None for tcp); warns for remote tcp.

    Returns
    -------
    address : str
        Normalised ``scheme://host:port``.
    security : distributed.security.Security or None
    """
    parsed = parse_address(address)
    if parsed.scheme == "tls":
        return str(parsed), security_from_config()
    if not is_loopback(parsed.host):
        log.warning(
            "warning: %s is not a loopback address and tcp:// is unencrypted; anyone who reaches "
            "this scheduler can run code on its workers - prefer tls:// (docs/distributed.md)",
            parsed,
        )
    return str(parsed), None


def connect(address: str, *, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A :class:`distributed.Client` connected to the scheduler at ``address``.

    See :func:`connection_settings` for tls/tcp handling; an unreachable scheduler is one
    :class:`InputError` line.
    """
    distributed = require_distributed()
    addr, security = connection_settings(address)
    try:
        return distributed.Client(addr, security=security, timeout=timeout,
                                  set_as_default=False)
    except (OSError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot reach the dask scheduler at {addr}: {reason}") from None


def local_cluster(
    n_workers: int, threads_per_worker: int = 1, *, dashboard: bool = False
) -> Any:
    """A ``LocalCluster`` of ``n_workers`` processes bound to 127.0.0.1 only.

    Parameters
    ----------
    n_workers : int
        Worker processes (each loads the bundle once).
    threads_per_worker : int
        Task threads per worker (1: one image or block at a time per process).
    dashboard : bool
        Serve the dask dashboard on ``127.0.0.1`` (a free port); off by default.
    """
    distributed = require_distributed()
    if int(n_workers) < 1:
        raise InputError(f"--workers {n_workers} must be >= 1")
    if int(threads_per_worker) < 1:
        raise InputError(f"threads per worker {threads_per_worker} must be >= 1")
    import dask

    # dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 so that they hand freed
    # memory back at once; tiled inference frees and reallocates megabyte-sized arrays per tile,
    # and with that setting the same image took about twice as long in a worker as in a plain
    # process (measured, docs/distributed.md). Workers here keep glibc's default (or the
    # user's own variable). The nanny also writes its variables into this process's
    # environment before spawning; they are put back afterwards.
    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {})) | {
        "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED"}
    saved = {k: os.environ.get(k) for k in keys}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            return distributed.LocalCluster(
                n_workers=int(n_workers),
                threads_per_worker=int(threads_per_worker),
                processes=True,
                host="127.0.0.1",
                protocol="tcp://",
                # the scheduler always serves HTTP (health, metrics; the dashboard when asked):
                # on 127.0.0.1 and a free port, never dask's default 8787 that may be taken
                scheduler_kwargs={"dashboard": bool(dashboard),
                                  "dashboard_address": "127.0.0.1:0"},
                worker_dashboard_address=None,
                silence_logs=logging.ERROR,
            )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def cluster_client(
    *, workers: int | None = None, scheduler: str | None = None, threads_per_worker: int = 1
) -> Iterator[Any]:
    """A client for ``--workers N`` (a fresh local cluster) or ``--scheduler ADDRESS``.

    The local cluster (if any) and the client are closed on exit.
    """
    if (workers is None) == (scheduler is None):
        raise InputError("give either --workers N or --scheduler ADDRESS, not both")
    distributed = require_distributed()
    if scheduler is not None:
        client = connect(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(int(workers), threads_per_worker)
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# ---------------------------------------------------------------------------- bundle payload
@dataclass(frozen=True)
class BundlePayload:
    """A bundle as bytes plus the sha256 the client read them with.

    Attributes
    ----------
    name : str
        The bundle's name (for messages).
    path : str or None
        Where the client loaded it from (recorded in provenance like a local run).
    sha256 : str
        Hex digest of ``data`` on the client.
    data : bytes
        The ``.dgseg`` file's bytes.
    """

    name: str
    path: str | None
    sha256: str
    data: bytes

    def __repr__(self) -> str:  # never print megabytes of bytes
        return f"BundlePayload(name={self.name!r}, sha256={self.sha256[:12]}, {len(self.data):,} bytes)"


def bundle_payload(bundle: Any) -> BundlePayload:
    """Bytes and sha256 of a loaded bundle (or of a bundle name/path, loaded first).

    A bundle loaded from a file is read again and must still have the hash it was loaded with
    (one line otherwise: the file changed on disk); an unsaved bundle is serialised.
    """
    from napari_dgseg.core.bundle import load_bundle, sha256_bytes
    from napari_dgseg.core.limits import MAX_BUNDLE_FILE_BYTES

    bundle = load_bundle(bundle)
    if bundle.path is None:
        data = bundle.to_bytes()
        return BundlePayload(bundle.name, None, sha256_bytes(data), data)
    path = Path(bundle.path)
    try:
        if path.stat().st_size > MAX_BUNDLE_FILE_BYTES:
            raise BundleError(f"{path} is larger than {MAX_BUNDLE_FILE_BYTES:,} bytes; refused")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    digest = sha256_bytes(data)
    if bundle.sha256 is not None and digest != bundle.sha256:
        raise BundleError(
            f"{path} changed on disk since it was loaded (sha256 {digest[:12]} instead of "
            f"{bundle.sha256[:12]}); load it again"
        )
    return BundlePayload(bundle.name, str(path), digest, data)


_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: Bundles parsed by :func:`load_payload` in this process (a cache miss each); for tests.
LOADS: list[str] = []


def load_payload(payload: BundlePayload) -> Any:
    """The :class:`~napari_dgseg.core.bundle.Bundle` of ``payload``, verified, once per process.

    On a cache miss the bytes must hash to ``payload.sha256`` (else one :class:`BundleError`
    line), then they are parsed in memory by the safe loader and the network is built; later
    calls with the same hash return the cached bundle.
    """
    from napari_dgseg.core.bundle import Bundle, read_bundle_bytes, sha256_bytes
    from napari_dgseg.core.limits import MAX_BUNDLE_FILE_BYTES

    if not isinstance(payload, BundlePayload):
        raise BundleError(f"expected bundle bytes and their sha256, got {type(payload).__name__}")
    with _CACHE_LOCK:
        cached = _CACHE.get(payload.sha256)
        if cached is not None:
            _CACHE.move_to_end(payload.sha256)
            return cached
        if len(payload.data) > MAX_BUNDLE_FILE_BYTES:
            raise BundleError(f"bundle {payload.name!r} sent to the worker is larger than "
                              f"{MAX_BUNDLE_FILE_BYTES:,} bytes; refused")
        digest = sha256_bytes(payload.data)
        if digest != payload.sha256:
            raise BundleError(
                f"bundle {payload.name!r} received by the worker does not match its sha256 "
                f"(expected {payload.sha256[:12]}, got {digest[:12]}); refused - the transfer was "
                "damaged or altered"
            )
        source = f"bundle {payload.name!r} (sha256 {digest[:12]}) sent to the worker"
        manifest, tensors = read_bundle_bytes(payload.data, source=source)
        bundle = Bundle(manifest, tensors, path=Path(payload.path) if payload.path else None,
                        sha256=digest)
        bundle.model.eval()  # build the network once, under the lock
        _CACHE[digest] = bundle
        LOADS.append(digest)
        while len(_CACHE) > MAX_CACHED_BUNDLES:
            _CACHE.popitem(last=False)
        return bundle


def scatter_bundle(client: Any, payload: BundlePayload) -> Any:
    """Send ``payload`` to every worker once; returns the future tasks take as argument."""
    return client.scatter(payload, broadcast=True, hash=False)


_LOCAL_LOCK = threading.Lock()
_LOCAL_DEPTH = 0
_LOCAL_SAVED: Any = None


@contextlib.contextmanager
def local_dask_scheduler() -> Iterator[None]:
    """Within the block, dask collections compute in the calling thread.

    Inside a dask worker, ``.compute()`` of a lazy image (a TIFF pyramid level is a dask array
    over an open file) would otherwise go to the cluster, which cannot serialise the open file.
    Reference-counted, so overlapping tasks of one multi-threaded worker do not undo each other.
    """
    global _LOCAL_DEPTH, _LOCAL_SAVED
    import dask

    with _LOCAL_LOCK:
        if _LOCAL_DEPTH == 0:
            _LOCAL_SAVED = dask.config.get("scheduler", None)
            dask.config.set({"scheduler": "synchronous"})
        _LOCAL_DEPTH += 1
    try:
        yield
    finally:
        with _LOCAL_LOCK:
            _LOCAL_DEPTH -= 1
            if _LOCAL_DEPTH == 0:
                dask.config.set({"scheduler": _LOCAL_SAVED})


def _with_bundle(payload: BundlePayload, fn: Callable[..., Any], args: tuple,
                 threads: int | None) -> Any:
    """Worker side: verified cached bundle, torch threads, then ``fn(bundle, *args)``."""
    from napari_dgseg.core.precision import set_threads

    bundle = load_payload(payload)
    set_threads(threads)
    with local_dask_scheduler():
        return fn(bundle, *args)


def submit_with_bundle(client: Any, payload_future: Any, fn: Callable[..., Any], *args: Any,
                       threads: int | None = None) -> Any:
    """Run ``fn(bundle, *args)`` on a worker; ``fn`` must be importable (a module-level function).

    ``payload_future`` is :func:`scatter_bundle`'s future; ``threads`` sets torch's CPU threads
    in the worker (None: the worker's default, one thread under a dask nanny).
    """
    return client.submit(_with_bundle, payload_future, fn, tuple(args), threads, pure=False)


# ---------------------------------------------------------------------------- block executor
_PLANS: OrderedDict[str, Any] = OrderedDict()


def _load_plan(plan_type: str, plan_json: str) -> Any:
    """Rebuild a plan from ``module:QualName`` and its JSON, cached per worker process."""
    key = f"{plan_type}\0{plan_json}"
    with _CACHE_LOCK:
        plan = _PLANS.get(key)
        if plan is None:
            module, _, qualname = plan_type.partition(":")
            cls: Any = import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            plan = cls.from_json(plan_json)
            _PLANS[key] = plan
            while len(_PLANS) > 2:
                _PLANS.popitem(last=False)
        return plan


def _block_task(bundle: Any, block_fn: Callable[..., Any], plan_ref: tuple[str, str],
                block_id: Any) -> Any:
    """Worker side of :class:`DaskBlockExecutor`: one block with the cached bundle and plan."""
    return block_fn(bundle, _load_plan(*plan_ref), block_id)


def _default_block_fn() -> Callable[..., Any]:
    from napari_dgseg.core.wsi.stream import run_block

    return run_block


class DaskBlockExecutor:
    """Runs whole-slide blocks on dask workers: a ``block_executor(plan, block_ids, progress)``.

    Each block is one task ``block_fn(bundle, plan, block_id)`` (default
    :func:`napari_dgseg.core.wsi.stream.run_block`, which writes its block of the output store)
    on a worker holding the verified, cached bundle; the plan travels as JSON
    (``plan.to_json()`` / ``type(plan).from_json``). ``progress(done, total)`` is called as
    blocks finish; when ``cancel`` is set, the blocks not started are cancelled and
    :class:`CancelledError` is raised; a failing block cancels the rest and its error is raised.

    Parameters
    ----------
    client : distributed.Client
    bundle : Bundle, str or path
        The model (sent once to every worker as verified bytes).
    cancel : threading.Event or callable, optional
    block_fn : callable, optional
        Importable ``(bundle, plan, block_id) -> Any``.
    threads : int, optional
        torch CPU threads in each worker.
    poll : float
        Seconds between cancel checks while waiting.
    """

    def __init__(self, client: Any, bundle: Any, *, cancel: Any = None,
                 block_fn: Callable[..., Any] | None = None, threads: int | None = None,
                 poll: float = 0.05) -> None:
        self.client = client
        self.payload = bundle if isinstance(bundle, BundlePayload) else bundle_payload(bundle)
        self.cancel = cancel
        self.block_fn = block_fn or _default_block_fn()
        self.threads = threads
        self.poll = poll
        self._payload_future: Any = None

    def __call__(self, plan: Any, block_ids: Sequence[Any],
                 progress: Callable[[int, int], Any] | None = None) -> None:
        distributed = require_distributed()
        if self._payload_future is None:
            self._payload_future = scatter_bundle(self.client, self.payload)
        # the plan (its JSON lists every block) goes to each worker once, not with every task
        plan_ref = self.client.scatter(plan_type_and_json(plan), broadcast=True, hash=False)
        ids = list(block_ids)
        total = len(ids)
        if progress is not None:
            progress(0, total)
        futures = [submit_with_bundle(self.client, self._payload_future, _block_task,
                                      self.block_fn, plan_ref, _plain(b),
                                      threads=self.threads) for b in ids]
        pending = distributed.as_completed(futures, loop=self.client.loop)
        done = 0
        try:
            while done < total:
                check_cancel(self.cancel)
                batch = pending.next_batch(block=False)
                if not batch:
                    time.sleep(self.poll)
                    continue
                for future in batch:
                    future.result()  # raises the block's error here
                    done += 1
                if progress is not None:
                    progress(done, total)
        except BaseException:
            self.client.cancel(futures)
            raise


def _plain(block_id: Any) -> Any:
    """Block ids as plain JSON-like values (tuples of numpy ints become tuples of ints)."""
    if isinstance(block_id, (list, tuple)):
        return tuple(_plain(b) for b in block_id)
    if hasattr(block_id, "item"):
        return block_id.item()
    return block_id


# ------------------------------------------------------------------------------ file batches
@dataclass
class Outcome:
    """What became of one item of :func:`map_with_bundle`.

    Attributes
    ----------
    status : str
        ``done``, ``error`` or ``skipped``.
    value : Any
        The function's result (``done``) or the exception (``error``).
    """

    status: str
    value: Any = None


def map_with_bundle(
    client: Any,
    bundle: Any,
    fn: Callable[..., Any],
    items: Sequence[tuple],
    *,
    threads: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    stop_on: Callable[[BaseException], bool] = lambda exc: False,
    cancel: Any = None,
    poll: float = 0.05,
) -> list[Outcome]:
    """Run ``fn(bundle, *item)`` for every item on the cluster; outcomes in input order.

    One failing item does not stop the others. An error for which ``stop_on(exc)`` is true
    (disk full) cancels the items not finished yet: they come back as ``skipped``. ``cancel``
    (or Ctrl+C) cancels everything and raises.
    """
    distributed = require_distributed()
    payload = bundle if isinstance(bundle, BundlePayload) else bundle_payload(bundle)
    payload_future = scatter_bundle(client, payload)
    futures = [submit_with_bundle(client, payload_future, fn, *item, threads=threads)
               for item in items]
    total = len(futures)
    if progress is not None:
        progress(0, total)
    pending = distributed.as_completed(futures, loop=client.loop)
    done = 0
    stopped = False
    try:
        while done < total and not stopped:
            check_cancel(cancel)
            batch = pending.next_batch(block=False)
            if not batch:
                time.sleep(poll)
                continue
            for future in batch:
                done += 1
                if future.status == "error" and stop_on(future.exception()):
                    stopped = True
            if progress is not None:
                progress(done, total)
        if stopped:
            client.cancel([f for f in futures if not f.done()])
        outcomes = []
        for future in futures:
            if future.status == "finished":
                outcomes.append(Outcome("done", future.result()))
            elif future.status == "error":
                outcomes.append(Outcome("error", future.exception()))
            else:
                outcomes.append(Outcome("skipped"))
        return outcomes
    except BaseException:
        client.cancel(futures)
        raise


def describe_cluster(client: Any) -> dict:
    """Scheduler address and worker addresses/threads (for the JSON summary)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    return {"scheduler": info.get("address"),
            "workers": len(workers),
            "threads": sum(int(w.get("nthreads", 0)) for w in workers.values())}


def plan_type_and_json(plan: Any) -> tuple[str, str]:
    """``module:QualName`` and JSON of a plan (what :class:`DaskBlockExecutor` sends)."""
    text = plan.to_json()
    json.loads(text)  # must be JSON
    return f"{type(plan).__module__}:{type(plan).__qualname__}", text


__all__ = [
    "BundlePayload",
    "DaskBlockExecutor",
    "Outcome",
    "bundle_payload",
    "cluster_client",
    "connect",
    "connection_settings",
    "describe_cluster",
    "is_loopback",
    "load_payload",
    "local_cluster",
    "map_with_bundle",
    "parse_address",
    "scatter_bundle",
    "security_from_config",
    "submit_with_bundle",
]
