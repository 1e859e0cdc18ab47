"""Finding and listing bundles from their manifests alone: no torch, no model code.

``dgseg models``, the napari model picker and :func:`napari_dgseg.core.bundle.load_bundle` share
the bounded reading of a bundle's zip directory and manifest defined here
(:mod:`napari_dgseg.core.limits` holds the caps); loading weights and building networks stays in
:mod:`napari_dgseg.core.bundle`.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_dgseg.core.errors import BundleError
from napari_dgseg.core.limits import (
    MAX_BUNDLE_FILE_BYTES,
    MAX_BUNDLE_MEMBERS,
    MAX_BUNDLE_TOTAL_BYTES,
    MAX_JSON_BYTES,
    MAX_MEMBER_BYTES,
    check_config_values,
    load_json_bounded,
    unsafe_member_reason,
)
from napari_dgseg.core.registry import available_family_names

SCHEMA = "napari-dgseg.bundle"
SCHEMA_VERSION = 1
SUFFIX = ".dgseg"
MANIFEST = "bundle.json"
WEIGHTS = "weights.safetensors"

def shipped_dir() -> Path:
    """Folder of the bundles that ship with the package."""
    return Path(__file__).resolve().parent.parent / "bundles"


def user_dir() -> Path:
    """Per-user model folder where trained and adapted bundles are saved.

    ``$DGSEG_MODEL_DIR`` if set, else ``$XDG_DATA_HOME/napari-dgseg/models``
    (``~/.local/share/napari-dgseg/models``; ``%APPDATA%`` on Windows).
    """
    env = os.environ.get("DGSEG_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    if os.name == "nt" and os.environ.get("APPDATA"):
        base = Path(os.environ["APPDATA"])
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "napari-dgseg" / "models"



def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> bytes:
    """Bytes of one archive member, read in chunks and never more than its caps.

    The declared size was checked already; the count here guards against a header that lies.
    A damaged member (bad CRC, broken deflate) -> BundleError.
    """
    cap = min(info.file_size, MAX_MEMBER_BYTES)
    chunks: list[bytes] = []
    total = 0
    try:
        with zf.open(info) as fh:
            while True:
                chunk = fh.read(min(1 << 20, cap + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise BundleError(
                        f"{source}: {info.filename} holds more data than its header declares "
                        f"({info.file_size:,} bytes); the archive is forged or damaged. Refused"
                    )
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError,
            OSError) as exc:
        raise BundleError(
            f"{source}: {info.filename} is damaged inside the archive ({_first_line(exc)}); "
            "re-download or re-train the model"
        ) from None
    return b"".join(chunks)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_archive(data: bytes | Path, source: str) -> zipfile.ZipFile:
    """Open a bundle archive and check its directory against the caps before anything is read.

    Refused: more than :data:`~napari_dgseg.core.limits.MAX_BUNDLE_MEMBERS` members, unsafe
    member names, duplicates, a member declared larger than ``MAX_MEMBER_BYTES`` or all together
    larger than ``MAX_BUNDLE_TOTAL_BYTES``, and no manifest.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        raise BundleError(f"{source} is not a valid bundle (broken zip: {_first_line(exc)})") from None
    try:
        infos = zf.infolist()
        if len(infos) > MAX_BUNDLE_MEMBERS:
            raise BundleError(f"{source} holds {len(infos)} files, more than the {MAX_BUNDLE_MEMBERS} "
                              "a bundle may have; refused")
        names = [i.filename for i in infos]
        for n in names:
            why = unsafe_member_reason(n)
            if why:
                raise BundleError(f"{source} holds a member named {n!r}, which {why}; refused "
                                  "(a bundle holds plain file names only)")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:  # zip readers disagree on which copy wins: ambiguous, so refused
            raise BundleError(f"{source} holds duplicate entries {dupes}; refused")
        for info in infos:
            if info.file_size > MAX_MEMBER_BYTES:
                raise BundleError(
                    f"{source}: {info.filename} would unpack to {info.file_size:,} bytes, more than "
                    f"the {MAX_MEMBER_BYTES:,} allowed (a zip bomb or not a real bundle); refused"
                )
        total = sum(i.file_size for i in infos)
        if total > MAX_BUNDLE_TOTAL_BYTES:
            raise BundleError(f"{source} would unpack to {total:,} bytes, more than the "
                              f"{MAX_BUNDLE_TOTAL_BYTES:,} allowed; refused")
        if MANIFEST not in names:
            raise BundleError(f"{source} has no {MANIFEST}; it is not a napari-dgseg bundle")
    except BaseException:
        zf.close()
        raise
    return zf


def _read_manifest(zf: zipfile.ZipFile, source: str) -> dict[str, Any]:
    """The validated manifest: bounded JSON, known schema, fields of the right types."""
    info = zf.getinfo(MANIFEST)
    if info.file_size > MAX_JSON_BYTES:
        raise BundleError(f"{source}: {MANIFEST} is {info.file_size:,} bytes, more than the "
                          f"{MAX_JSON_BYTES:,} allowed; refused")
    manifest = load_json_bounded(_read_member(zf, info, source), f"{source}: {MANIFEST}",
                                 error=BundleError)
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{source}: unknown bundle schema {found!r}; expected {SCHEMA!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{source}: bundle schema version {version!r} is not supported by this napari-dgseg "
            f"(supports {SCHEMA_VERSION}); update napari-dgseg"
        )
    _check_manifest_types(manifest, source)
    return manifest


def _check_manifest_types(manifest: Mapping[str, Any], source: str) -> None:
    """Refuse manifest fields of the wrong type (they would fail later with a traceback)."""
    expected = {"name": str, "family": str, "config": dict, "files": dict,
                "classes": list, "input": dict, "provenance": dict, "task": str,
                "description": str, "scale": dict}
    for key, typ in expected.items():
        if key in manifest and not isinstance(manifest[key], typ):
            raise BundleError(f"{source}: {MANIFEST} field {key!r} is a "
                              f"{type(manifest[key]).__name__}, expected a {typ.__name__}; refused")
    for key in ("family", "config"):
        if key not in manifest:
            raise BundleError(f"{source}: {MANIFEST} has no {key!r}; refused")
    for c in manifest.get("classes", []):
        if not (isinstance(c, dict) and isinstance(c.get("id"), int)
                and isinstance(c.get("name"), str) and isinstance(c.get("color"), list)
                and len(c["color"]) == 3 and all(isinstance(v, int) for v in c["color"])):
            raise BundleError(f"{source}: {MANIFEST} has a malformed class entry {str(c)[:80]}; "
                              "expected {id, name, color [r, g, b]}")
    files = manifest.get("files", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BundleError(f"{source}: {MANIFEST} 'files' must map file names to sha256 strings")
    check_config_values(manifest["config"], source, error=BundleError)



def inspect_bundle(path: str | Path) -> dict[str, Any]:
    """The validated manifest of a bundle file, reading nothing but its directory and manifest.

    Cheap (no weights are decompressed) but bounded like :func:`load_bundle`; a file that cannot
    be a valid bundle raises :class:`BundleError` with the reason.
    """
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BUNDLE_FILE_BYTES:
            raise BundleError(f"{source} is {size:,} bytes, more than the {MAX_BUNDLE_FILE_BYTES:,} "
                              "a bundle may have")
        with open(path, "rb") as fh:
            if fh.read(2) != b"PK":
                raise BundleError(f"{source} is not a bundle (not a zip file)")
            with _open_archive(path, source) as zf:
                manifest = _read_manifest(zf, source)
                names = set(zf.namelist())
    except OSError as exc:
        raise BundleError(f"cannot read {source}: {exc.strerror or _first_line(exc)}") from None
    listed = manifest.get("files") or {}
    if WEIGHTS not in listed or set(listed) | {MANIFEST} != names:
        raise BundleError(f"{source}: the files in the archive differ from those in the manifest")
    family = manifest.get("family")
    if family not in available_family_names():  # by name: listing imports no model code
        raise BundleError(
            f"{source}: unknown model family {family!r}; this napari-dgseg knows "
            f"{available_family_names()} (a newer version or a plug-in family may be needed)"
        )
    return manifest


#: The shipped file naming each task's default model (chosen by measurement; see its "why").
DEFAULTS_FILE = "defaults.json"


def default_models() -> dict[str, str]:
    """Task -> name of its default model, from the shipped ``defaults.json`` (empty if absent).

    The defaults are the models that generalise best in ``benchmarks/recipe_selection.py`` /
    ``docs/generalization.md``; a missing or malformed file means "no default", never an error.
    """
    path = shipped_dir() / DEFAULTS_FILE
    try:
        data = load_json_bounded(path.read_bytes(), str(path), error=BundleError)
    except (OSError, BundleError, ValueError):
        return {}
    tasks = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(tasks, Mapping):
        return {}
    return {str(t): str(v["model"]) for t, v in tasks.items()
            if isinstance(v, Mapping) and isinstance(v.get("model"), str)}


def list_bundles() -> list[dict[str, Any]]:
    """Shipped and user bundles: name, family, task, where, path, description.

    Only manifests are read (no weights). A file that cannot be a valid bundle is listed with
    ``"broken"``: the reason (one line), so that one bad file never hides the others. A user
    bundle with the same name as a shipped one shadows it (it is what :func:`load_bundle` returns
    for that name). ``default`` marks each task's default model (:func:`default_models`); the
    defaults come first, then the other shipped models, then the user's.
    """
    defaults = set(default_models().values())
    rows: dict[str, dict[str, Any]] = {}
    for where, folder in (("shipped", shipped_dir()), ("user", user_dir())):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(f"*{SUFFIX}")):
            name = path.name[: -len(SUFFIX)]
            try:
                manifest = inspect_bundle(path)
            except BundleError as exc:
                rows[name] = {"name": name, "family": None, "task": "", "classes": [],
                              "where": where, "path": str(path), "description": "",
                              "val_metrics": {}, "broken": str(exc)}
                continue
            rows[name] = {
                "name": name,
                "family": manifest.get("family"),
                "task": manifest.get("task", ""),
                "classes": [c.get("name") for c in manifest.get("classes", [])],
                "where": where,
                "path": str(path),
                "description": manifest.get("description", ""),
                "val_metrics": manifest.get("provenance", {}).get("val_metrics", {}),
                "heldout_metrics": manifest.get("evaluation", {}).get("heldout", {}),
            }
    for row in rows.values():
        row["default"] = row["where"] == "shipped" and row["name"] in defaults
    return sorted(rows.values(),
                  key=lambda r: (r["where"] != "shipped", not r["default"], r["name"]))
