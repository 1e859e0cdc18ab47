"""Model bundles: one ``NAME.dgseg`` file that loads without executing code.

A bundle is a zip archive holding

* ``bundle.json``: the manifest (schema, family, frozen model config, classes and colours, input
  spec, the sha256 of every tensor file, provenance);
* ``weights.safetensors``: the network's state dict;
* optionally more ``*.safetensors`` files (``bank.safetensors``: DCIN reference bank,
  ``replay.safetensors``: a labelled source replay set for adaptation, a discriminator, ...).

Loading checks, before any tensor is used, that the schema is known, that the archive holds
exactly the files the manifest lists, that none of them is a pickle, and that every hash matches;
otherwise :class:`~napari_dgseg.core.errors.BundleError` says why. Tensors are parsed by
safetensors, which cannot run code. Saving is atomic (temporary file in the same folder, then
``os.replace``), so an interrupted save never leaves a half-written bundle or touches the old one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from napari_dgseg.core.atomic import atomic_write_bytes
from napari_dgseg.core.bundle_index import (  # noqa: F401  (re-exported: the public place)
    MANIFEST,
    SCHEMA,
    SCHEMA_VERSION,
    SUFFIX,
    WEIGHTS,
    _first_line,
    _open_archive,
    _read_manifest,
    _read_member,
    inspect_bundle,
    list_bundles,
    shipped_dir,
    user_dir,
)
from napari_dgseg.core.errors import BundleError, DgsegError, InputError
from napari_dgseg.core.family import Family, config_to_dict
from napari_dgseg.core.imageprep import SCALING_RULE
from napari_dgseg.core.inference import predict_bundle
from napari_dgseg.core.limits import (
    MAX_BUNDLE_FILE_BYTES,
    MAX_MODEL_ELEMENTS,
    unsafe_member_reason,
)
from napari_dgseg.core.registry import get_family
from napari_dgseg.core.scale import SCALE_KEY, bundle_scale, normalize_scale

#: Suffixes of files that are (or usually hold) pickles; never accepted inside a bundle.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz", ".joblib")
DEFAULT_INPUT_SPEC = {
    "channels": 3,
    "color": "RGB",
    "scaling": SCALING_RULE,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}
DEFAULT_COLORS = [
    [0, 0, 0],
    [255, 64, 64],
    [64, 160, 255],
    [255, 200, 0],
    [80, 220, 120],
    [200, 90, 255],
    [255, 140, 40],
    [40, 220, 220],
]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _looks_like_pickle(data: bytes) -> bool:
    # Pickle protocols 2-5 start with PROTO (0x80) + version; torch's zip checkpoints hold data.pkl.
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                return any(n.endswith((".pkl", "data.pkl")) for n in inner.namelist())
        except zipfile.BadZipFile:
            return False
    return False


class Bundle:
    """A loaded (or freshly trained) model with its manifest and extra tensors.

    Use :func:`load_bundle` to open one; :meth:`Bundle.create` to make one from a trained model.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        tensors: Mapping[str, Mapping[str, torch.Tensor]],
        path: Path | None = None,
        sha256: str | None = None,
    ) -> None:
        self.manifest = manifest
        self._tensors = {k: dict(v) for k, v in tensors.items()}
        self.path = path
        self.sha256 = sha256
        self._model: torch.nn.Module | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        family: str,
        config: Any,
        *,
        name: str,
        class_names: Sequence[str],
        class_colors: Sequence[Sequence[int]] | None = None,
        task: str = "",
        input_spec: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        extras: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        description: str = "",
        scale: Mapping[str, Any] | None = None,
    ) -> Bundle:
        """Bundle a trained ``model`` of ``family`` with its config and metadata (not saved yet).

        ``scale`` is the training scale recorded under the manifest key ``"scale"``
        (``pixel_size_um``, ``object_size_px``, ``train_range``; see
        :mod:`napari_dgseg.core.scale`); without it the task's default applies.
        """
        fam = get_family(family)
        cfg = config if not isinstance(config, Mapping) else fam.make_config(config)
        colors = list(class_colors or DEFAULT_COLORS[: len(class_names)])
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "family": family,
            "description": description or fam.description,
            "task": task,
            "config": config_to_dict(cfg),
            "classes": [
                {"id": i, "name": str(n), "color": [int(c) for c in colors[i % len(colors)]]}
                for i, n in enumerate(class_names)
            ],
            "input": dict(input_spec or DEFAULT_INPUT_SPEC),
            "files": {},
            "provenance": dict(provenance or {}),
        }
        if scale is not None:
            manifest[SCALE_KEY] = normalize_scale(scale, f"bundle {name!r}")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors = {WEIGHTS: state}
        for fname, tdict in (extras or {}).items():
            tensors[_tensor_file_name(fname)] = dict(tdict)
        bundle = cls(manifest, tensors)
        bundle._model = model
        return bundle

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return str(self.manifest.get("name", ""))

    @property
    def family_name(self) -> str:
        return str(self.manifest["family"])

    @property
    def family(self) -> Family:
        return get_family(self.family_name)

    @property
    def config(self) -> dict[str, Any]:
        """The frozen model config (a plain dict, as stored in ``bundle.json``)."""
        return dict(self.manifest["config"])

    @property
    def postprocess_config(self) -> dict[str, Any]:
        """The config post-processing reads: :attr:`config` with the measured overrides of the
        manifest's ``inference.postprocess`` (post-processing parameters chosen after training,
        with their evidence in ``inference.postprocess_evidence``); the architecture and the
        config that ``--init`` compares are untouched."""
        overrides = (self.manifest.get("inference") or {}).get("postprocess") or {}
        return {**self.config, **overrides}

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.manifest.get("classes", []))

    @property
    def class_colors(self) -> dict[int, tuple[int, int, int]]:
        return {int(c["id"]): tuple(c["color"]) for c in self.manifest.get("classes", [])}

    @property
    def input_spec(self) -> dict[str, Any]:
        return dict(self.manifest.get("input", DEFAULT_INPUT_SPEC))

    @property
    def scale(self) -> dict[str, Any]:
        """Training scale: ``pixel_size_um``, ``object_size_px``, ``train_range`` (the manifest's
        ``"scale"``, else the task's default, see :func:`napari_dgseg.core.scale.bundle_scale`),
        and ``estimate_tolerance_share`` where the model has measured one."""
        rec = bundle_scale(self.manifest)
        keys = ("pixel_size_um", "object_size_px", "train_range", "estimate_tolerance_share")
        return {k: rec[k] for k in keys if k in rec}

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.manifest.get("provenance", {}))

    @property
    def tensor_files(self) -> list[str]:
        return sorted(self._tensors)

    def extra(self, name: str) -> dict[str, torch.Tensor] | None:
        """Extra tensors stored as ``<name>.safetensors`` (e.g. ``"bank"``), or None."""
        return self._tensors.get(_tensor_file_name(name))

    def set_extra(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Add or replace an extra tensor file (takes effect in the next :meth:`save`)."""
        self._tensors[_tensor_file_name(name)] = {
            k: v.detach().cpu().contiguous() for k, v in tensors.items()
        }

    @property
    def model(self) -> torch.nn.Module:
        """The network, built from the config and weights on first use; returned in eval mode."""
        if self._model is None:
            model = self.family.build_model(self.config)
            try:
                model.load_state_dict(self._tensors[WEIGHTS], strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise BundleError(
                    f"bundle {self.name!r}: weights do not fit the {self.family_name!r} config "
                    f"({first}); the bundle was made by another version or edited"
                ) from None
            self._model = model
        return self._model.eval()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Current network weights (from the live model if it was built)."""
        if self._model is not None:
            return {k: v.detach().cpu().contiguous() for k, v in self._model.state_dict().items()}
        return dict(self._tensors[WEIGHTS])

    # ------------------------------------------------------------------ saving
    def to_bytes(self) -> bytes:
        """Serialise to the zip format (manifest hashes recomputed)."""
        files: dict[str, bytes] = {}
        tensors = dict(self._tensors)
        tensors[WEIGHTS] = self.state_dict()
        for fname, tdict in sorted(tensors.items()):
            files[fname] = st_save(tdict, metadata={"format": "pt"})
        manifest = dict(self.manifest)
        manifest["files"] = {f: sha256_bytes(b) for f, b in files.items()}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=False))
            for fname, data in files.items():
                zf.writestr(fname, data)
        self.manifest = manifest
        return buf.getvalue()

    def save(self, path: str | Path, *, cancel: Any = None, overwrite: bool = False) -> Path:
        """Write the bundle atomically to ``path`` (``.dgseg`` appended if missing).

        The data go to a temporary file in the destination folder which replaces ``path`` only
        once complete; if ``cancel`` is set before the rename, the temporary file is removed and
        any existing file at ``path`` is untouched. An existing ``path`` is kept (and
        :class:`~napari_dgseg.core.errors.OutputExistsError` raised) unless ``overwrite``. While
        writing, the advisory lock ``<name>.dgseg.lock`` is held, so a second process saving
        the same name is refused (:class:`~napari_dgseg.core.errors.LockedError`) instead of
        silently winning the race.
        """
        from napari_dgseg.core.outputs import bundle_lock, refuse_existing

        path = Path(path)
        if path.suffix != SUFFIX:
            path = path.with_name(path.name + SUFFIX)
        refuse_existing([path], overwrite=overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        with bundle_lock(path, "save"):
            atomic_write_bytes(
                path,
                data,
                cancel=cancel,
                cancel_message=f"save of {path.name} cancelled; nothing was written",
                overwrite=overwrite,
            )
        self.path = path
        self.sha256 = sha256_bytes(data)
        return path

    # ------------------------------------------------------------------ inference
    def predict(self, image: Any, **kwargs: Any) -> Any:
        """Segment ``image``; see :func:`napari_dgseg.core.inference.predict_bundle`."""
        return predict_bundle(self, image, **kwargs)

    def info(self) -> dict[str, Any]:
        """The manifest plus where the bundle came from (what ``dgseg info`` prints)."""
        out = dict(self.manifest)
        out["path"] = str(self.path) if self.path else None
        out["sha256"] = self.sha256
        out["scale"] = bundle_scale(self.manifest)  # the record, or the task's default (source)
        out["parameters"] = int(sum(v.numel() for v in self.state_dict().values()))
        return out

    def __repr__(self) -> str:
        return f"Bundle(name={self.name!r}, family={self.family_name!r}, path={self.path})"


def _tensor_file_name(name: str) -> str:
    fname = name if name.endswith(".safetensors") else f"{name}.safetensors"
    why = unsafe_member_reason(fname)
    if why:
        raise BundleError(f"tensor file name {fname!r} {why}; use a plain name like 'bank'")
    return fname


# ---------------------------------------------------------------------- loading
def _expected_state(family: Family, config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Shapes and dtypes of the network the config describes, built on the meta device.

    Nothing is allocated, so a config asking for gigantic widths costs nothing; a network with
    more than :data:`~napari_dgseg.core.limits.MAX_MODEL_ELEMENTS` elements is refused.
    """
    try:
        with torch.device("meta"):
            model = family.build_model(dict(config))
    except DgsegError as exc:  # unknown config keys: name the file
        raise BundleError(f"{source}: {exc}") from None
    except Exception as exc:  # the family's own config checks (ValueError, TypeError, ...)
        raise BundleError(f"{source}: the {family.name!r} config cannot build a network "
                          f"({_first_line(exc)}); the bundle was edited or is not genuine") from None
    elements = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if elements > MAX_MODEL_ELEMENTS:
        raise BundleError(f"{source}: the config describes a network of {elements:,} values, more "
                          f"than the {MAX_MODEL_ELEMENTS:,} allowed; refused")
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _check_weights(weights: Mapping[str, torch.Tensor], expected: Mapping[str, Any],
                   family: str, source: str) -> None:
    """Weights must have exactly the expected names, shapes and dtypes."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{source}: weights do not fit the {family!r} config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); the bundle was made by another version or edited"
        )
    for key, (shape, dtype) in expected.items():
        t = weights[key]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise BundleError(
                f"{source}: weights do not fit the {family!r} config ({key!r} is {t.dtype} "
                f"{list(t.shape)}, the config needs {dtype} {list(shape)}); the bundle was made "
                "by another version or edited"
            )


def _check_finite(tensors: Mapping[str, torch.Tensor], fname: str, source: str) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BundleError(f"{source}: {fname} holds NaN or infinite values in {key!r}; the "
                              "model is broken (diverged training or a damaged file). Re-train "
                              "or re-download it")


def read_bundle_bytes(data: bytes, source: str = "<bytes>") -> tuple[dict, dict]:
    """Validate and parse bundle bytes into ``(manifest, tensors)``; never runs code.

    Every size is checked before it is allocated (see :mod:`napari_dgseg.core.limits`): the
    archive directory, each member while it is decompressed, the manifest JSON (bytes and
    depth), the config values and the size of the network it describes (built on the meta
    device), then the weights' names, shapes, dtypes and finiteness.
    """
    if _looks_like_pickle(data) or not data.startswith(b"PK"):
        kind = "a pickle (torch.save checkpoint)" if _looks_like_pickle(data) else "not a bundle"
        raise BundleError(
            f"{source} is {kind}; bundles are zip files of JSON + safetensors. Convert a PyTorch "
            "checkpoint with `dgseg convert CHECKPOINT --family NAME --out MODEL.dgseg`"
        )
    with _open_archive(data, source) as zf:
        names = zf.namelist()
        for n in names:
            if n.lower().endswith(PICKLE_SUFFIXES):
                raise BundleError(f"{source} holds {n!r}, a pickle-type file; refused (pickles can run code)")
        manifest = _read_manifest(zf, source)
        listed = manifest.get("files")
        if not isinstance(listed, dict) or WEIGHTS not in listed:
            raise BundleError(f"{source}: manifest lists no {WEIGHTS}")
        extra = sorted(set(names) - set(listed) - {MANIFEST})
        missing = sorted(set(listed) - set(names))
        if extra or missing:
            raise BundleError(f"{source}: files not in the manifest {extra} / missing {missing}; refused")
        family = get_family(str(manifest.get("family")))  # unknown -> message listing valid ones
        expected = _expected_state(family, manifest["config"], source)
        tensors: dict[str, dict[str, torch.Tensor]] = {}
        for fname, digest in listed.items():
            if not fname.endswith(".safetensors"):
                raise BundleError(f"{source}: {fname!r} is not a .safetensors file; refused")
            blob = _read_member(zf, zf.getinfo(fname), source)
            if _looks_like_pickle(blob):
                raise BundleError(f"{source}: {fname!r} holds a pickle; refused")
            if sha256_bytes(blob) != digest:
                raise BundleError(
                    f"{source}: {fname} does not match its sha256 in the manifest; the file was "
                    "modified or damaged. Re-download or re-train the model"
                )
            try:
                tensors[fname] = st_load(blob)
            except Exception as exc:  # safetensors raises its own error types
                raise BundleError(f"{source}: {fname} is not valid safetensors ({_first_line(exc)})") from None
            del blob
            if fname == WEIGHTS:
                _check_weights(tensors[fname], expected, family.name, source)
            _check_finite(tensors[fname], fname, source)
    return manifest, tensors


def resolve_bundle_path(name_or_path: str | os.PathLike) -> Path:
    """Find a bundle by file path, or by name among the shipped and user bundles."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    stem = p.name[: -len(SUFFIX)] if p.name.endswith(SUFFIX) else p.name
    for folder in (user_dir(), shipped_dir()):
        cand = folder / f"{stem}{SUFFIX}"
        if cand.is_file():
            return cand
    names = [b["name"] for b in list_bundles() if not b.get("broken")]
    raise BundleError(
        f"no model bundle {str(name_or_path)!r}: not a file, and not one of the known models "
        f"{names}. Give a path to a .dgseg file or one of these names"
    )


def load_bundle(name_or_path: str | os.PathLike | Bundle) -> Bundle:
    """Load a bundle by path or by name (user models first, then the shipped ones).

    Raises
    ------
    BundleError
        If the file is missing, not a bundle, tampered with, of an unknown schema, or holds a
        pickle; the message says why and what to do.
    """
    if isinstance(name_or_path, Bundle):
        return name_or_path
    path = resolve_bundle_path(name_or_path)
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_FILE_BYTES:
            raise BundleError(f"{path} is {size:,} bytes, more than the {MAX_BUNDLE_FILE_BYTES:,} a "
                              "bundle may have; it is not a napari-dgseg bundle")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    manifest, tensors = read_bundle_bytes(data, source=str(path))
    return Bundle(manifest, tensors, path=path, sha256=sha256_bytes(data))


def convert_checkpoint(
    checkpoint: str | Path,
    family: str,
    *,
    config: Mapping[str, Any] | None = None,
    class_names: Sequence[str] = ("background", "foreground"),
    name: str | None = None,
    task: str = "",
) -> Bundle:
    """Convert a PyTorch checkpoint into a bundle, loading it with ``weights_only=True``.

    This is the only place a pickle-format file is read, and only tensors and plain containers
    are accepted (``torch.load(..., weights_only=True)`` refuses code objects). The state dict may
    be the top-level object or under ``"state_dict"`` / ``"model"``.
    """
    fam = get_family(family)
    try:
        obj = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"checkpoint {checkpoint} does not exist") from None
    except Exception as exc:
        raise BundleError(
            f"{checkpoint} cannot be loaded safely with weights_only=True ({str(exc).splitlines()[0]}); "
            "only checkpoints holding plain tensors can be converted"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{checkpoint} does not hold a state dict of tensors")
    cfg = fam.make_config(config)
    model = fam.build_model(cfg)
    try:
        model.load_state_dict(dict(obj), strict=True)
    except RuntimeError as exc:
        raise BundleError(
            f"{checkpoint} does not fit a {family!r} model with config {config_to_dict(cfg)}: "
            f"{str(exc).splitlines()[0]}. Pass the matching --config"
        ) from None
    prov = {
        "converted_from": str(checkpoint),
        "converted_sha256": sha256_file(checkpoint),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Bundle.create(
        model, family, cfg, name=name or Path(checkpoint).stem, class_names=class_names,
        task=task, provenance=prov,
    )
