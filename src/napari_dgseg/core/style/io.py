"""Style bundles: one ``NAME.dgstyle`` file (zip of JSON + safetensors) that loads without code.

Layout, mirroring model bundles (:mod:`napari_dgseg.core.bundle`):

* ``bundle.json``: ``schema`` ``napari-dgseg.style``, ``schema_version``, ``name``, the frozen
  :class:`~napari_dgseg.core.style.model.StyleConfig`, the two ``domains`` (source, target), the
  sha256 of every tensor file and the provenance (data, losses, settings);
* ``weights.safetensors``: the generator's state dict (the discriminator is not needed to apply
  the model and is not stored).

Loading reuses the model bundles' bounded readers (archive directory caps, plain member names,
bounded JSON, no pickles) and checks, before any tensor is used, that the schema is the style
schema, that the archive holds exactly the listed files, that every hash matches, that the
weights have exactly the names, shapes and dtypes the config describes (built on the meta device,
so an absurd config allocates nothing) and that they are finite. Saving is atomic and refuses to
replace an existing file unless ``overwrite``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from napari_dgseg.core.atomic import atomic_write_bytes
from napari_dgseg.core.bundle import (
    MANIFEST,
    PICKLE_SUFFIXES,
    SCHEMA,
    WEIGHTS,
    _check_finite,
    _first_line,
    _looks_like_pickle,
    _open_archive,
    _read_member,
    sha256_bytes,
)
from napari_dgseg.core.errors import BundleError, DgsegError
from napari_dgseg.core.limits import (
    MAX_BUNDLE_FILE_BYTES,
    MAX_JSON_BYTES,
    check_config_values,
    load_json_bounded,
)
from napari_dgseg.core.style.model import StyleConfig, StyleGenerator
from napari_dgseg.core.style.transfer import StyleModel

STYLE_SCHEMA = "napari-dgseg.style"
STYLE_SCHEMA_VERSION = 1
STYLE_SUFFIX = ".dgstyle"


def style_path(path: str | Path) -> Path:
    """``path`` with the ``.dgstyle`` suffix appended when missing."""
    p = Path(path)
    return p if p.name.endswith(STYLE_SUFFIX) else p.with_name(p.name + STYLE_SUFFIX)


def style_to_bytes(model: StyleModel, name: str | None = None) -> bytes:
    """Serialise ``model`` to the ``.dgstyle`` zip format."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.generator.state_dict().items()}
    weights = st_save(state, metadata={"format": "pt"})
    manifest = {
        "schema": STYLE_SCHEMA,
        "schema_version": STYLE_SCHEMA_VERSION,
        "name": name or (Path(model.path).name[: -len(STYLE_SUFFIX)] if model.path else "style"),
        "config": model.config.to_dict(),
        "domains": list(model.domains),
        "files": {WEIGHTS: sha256_bytes(weights)},
        "provenance": model.provenance,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
        zf.writestr(WEIGHTS, weights)
    return buf.getvalue()


def save_style(model: StyleModel, path: str | Path, *, overwrite: bool = False,
               cancel: Any = None) -> Path:
    """Write ``model`` atomically to ``path`` (``.dgstyle`` appended); kept unless ``overwrite``.

    Raises
    ------
    OutputExistsError
        When the file exists and ``overwrite`` is False.
    """
    from napari_dgseg.core.outputs import bundle_lock, refuse_existing

    path = style_path(path)
    refuse_existing([path], overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = style_to_bytes(model, name=path.name[: -len(STYLE_SUFFIX)])
    with bundle_lock(path, "save"):
        atomic_write_bytes(path, data, cancel=cancel, overwrite=overwrite,
                           cancel_message=f"save of {path.name} cancelled; nothing was written")
    model.path = path
    model.sha256 = sha256_bytes(data)
    return path


def _expected_state(cfg: StyleConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        gen = StyleGenerator(cfg)
    return {k: (tuple(v.shape), v.dtype) for k, v in gen.state_dict().items()}


def read_style_bytes(data: bytes, source: str = "<bytes>") -> StyleModel:
    """Validate and parse ``.dgstyle`` bytes into a :class:`StyleModel`; never runs code."""
    if _looks_like_pickle(data):
        raise BundleError(f"{source} is or holds a pickle (a torch.save checkpoint?); refused: "
                          "style models are .dgstyle zips of JSON + safetensors")
    if not data.startswith(b"PK"):
        raise BundleError(f"{source} is not a style bundle (a .dgstyle zip of JSON + safetensors, "
                          "made by `dgseg style train`)")
    with _open_archive(data, source) as zf:
        names = zf.namelist()
        for n in names:
            if n.lower().endswith(PICKLE_SUFFIXES):
                raise BundleError(f"{source} holds {n!r}, a pickle-type file; refused")
        info = zf.getinfo(MANIFEST)
        if info.file_size > MAX_JSON_BYTES:
            raise BundleError(f"{source}: {MANIFEST} is too large ({info.file_size:,} bytes); refused")
        manifest = load_json_bounded(_read_member(zf, info, source), f"{source}: {MANIFEST}",
                                     error=BundleError)
        if not isinstance(manifest, dict):
            raise BundleError(f"{source}: {MANIFEST} is not a JSON object; refused")
        schema = manifest.get("schema")
        if schema == SCHEMA:
            raise BundleError(f"{source} is a model bundle, not a style model; give the .dgstyle "
                              "file that `dgseg style train` wrote")
        if schema != STYLE_SCHEMA:
            raise BundleError(f"{source}: unknown schema {schema!r}; expected {STYLE_SCHEMA!r}")
        if manifest.get("schema_version") != STYLE_SCHEMA_VERSION:
            raise BundleError(f"{source}: style schema version {manifest.get('schema_version')!r} "
                              f"is not supported (supports {STYLE_SCHEMA_VERSION}); update napari-dgseg")
        config, files = manifest.get("config"), manifest.get("files")
        domains, provenance = manifest.get("domains", ["source", "target"]), manifest.get("provenance", {})
        if not isinstance(config, dict) or not isinstance(files, dict) or not isinstance(provenance, dict):
            raise BundleError(f"{source}: {MANIFEST} lacks a config or files object; refused")
        if not (isinstance(domains, list) and len(domains) == 2 and all(isinstance(d, str) for d in domains)):
            raise BundleError(f"{source}: {MANIFEST} 'domains' must be two names; refused")
        check_config_values(config, source, error=BundleError)
        try:
            cfg = StyleConfig.from_dict(config, source)
        except DgsegError as exc:
            raise BundleError(str(exc)) from None
        extra = sorted(set(names) - set(files) - {MANIFEST})
        missing = sorted(set(files) - set(names))
        if extra or missing or set(files) != {WEIGHTS}:
            raise BundleError(f"{source}: files not in the manifest {extra} / missing {missing} / "
                              f"listed {sorted(files)}; expected only {WEIGHTS}. Refused")
        blob = _read_member(zf, zf.getinfo(WEIGHTS), source)
        if _looks_like_pickle(blob):
            raise BundleError(f"{source}: {WEIGHTS} holds a pickle; refused")
        if sha256_bytes(blob) != files[WEIGHTS]:
            raise BundleError(f"{source}: {WEIGHTS} does not match its sha256 in the manifest; the "
                              "file was modified or damaged. Re-train the style model")
        try:
            state = st_load(blob)
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{source}: {WEIGHTS} is not valid safetensors ({_first_line(exc)})") from None
    expected = _expected_state(cfg)
    if set(state) != set(expected) or any(
        tuple(state[k].shape) != shape or state[k].dtype != dtype for k, (shape, dtype) in expected.items()
    ):
        raise BundleError(f"{source}: weights do not fit the style config; the file was made by "
                          "another version or edited")
    _check_finite(state, WEIGHTS, source)
    gen = StyleGenerator(cfg)
    gen.load_state_dict(state)
    return StyleModel(gen, cfg, provenance, domains=(domains[0], domains[1]))


def load_style(path: str | Path) -> StyleModel:
    """Load a ``.dgstyle`` file; any problem raises :class:`BundleError` with what to do."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BundleError(f"no style model {str(path)!r}: not a file. Train one with "
                          "`dgseg style train --source DIR --target DIR --out NAME.dgstyle`")
    size = p.stat().st_size
    if size > MAX_BUNDLE_FILE_BYTES:
        raise BundleError(f"{p} is {size:,} bytes, too large for a style model; refused")
    data = p.read_bytes()
    model = read_style_bytes(data, str(p))
    model.path = p
    model.sha256 = sha256_bytes(data)
    return model
