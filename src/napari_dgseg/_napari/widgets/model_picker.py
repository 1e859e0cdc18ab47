"""The model picker of the napari-dgseg widgets: shipped + user bundles, Browse…, info line.

Only manifests are read to list the models (no weights); a bundle loads in the widget's
:class:`~napari_dgseg._napari.runner.TaskRunner`. A picker made with ``capability="codebook"``
lists only models whose family declares that capability (asked from the registry with the
family name of the manifest), and refuses a browsed file of another family.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.notify import notify
from napari_dgseg._napari.runner import ProgressFn, TaskRunner

__all__ = ["ModelPicker", "describe_bundle", "family_supports"]


def family_supports(family_name: Any, capability: str | None) -> bool:
    """True when the registered family ``family_name`` declares ``capability`` (None: any).

    An unknown family (a bundle from a newer version, a plugin not installed) supports nothing.
    """
    if capability is None:
        return True
    from napari_dgseg.core.registry import get_family

    try:
        return bool(get_family(str(family_name)).supports(capability))
    except Exception:  # unknown family name: the bundle cannot be used for this capability
        return False


def describe_bundle(manifest: dict[str, Any]) -> str:
    """One line about a model: family, classes, training domains, validation scores."""
    parts = [str(manifest.get("family", "?"))]
    classes = [c.get("name", "?") for c in manifest.get("classes", [])]
    if classes:
        parts.append("classes: " + ", ".join(classes))
    prov = manifest.get("provenance", {}) or {}
    domains = [s.get("domain") for s in prov.get("sources", []) if isinstance(s, dict)]
    domains = [d for d in domains if d]
    if domains:
        parts.append("trained on: " + ", ".join(domains))
    metrics = prov.get("val_metrics", {}) or {}
    scores = [f"{k} {float(metrics[k]):.3f}" for k in ("dice", "aji", "pq") if k in metrics]
    if scores:
        parts.append("validation " + ", ".join(scores))
    elif prov:
        parts.append("no validation scores recorded")
    from napari_dgseg.core.evaluation_record import heldout_line

    heldout = heldout_line((manifest.get("evaluation", {}) or {}).get("heldout"))
    if heldout:
        parts.append(heldout)
    return " · ".join(parts)


class ModelPicker(QWidget):
    """Pick and load a model bundle.

    A combo box of the shipped and user bundles (``name (family)``), a "Browse…" button for a
    ``.dgseg`` file anywhere, a refresh button, and an info line. Loading runs in a thread worker;
    a bundle that fails to load is reported in a notification and the previous model stays.

    Parameters
    ----------
    parent : QWidget, optional
    autoload : bool
        Load the first listed model at once.
    capability : str, optional
        Offer and accept only models whose family declares this capability (e.g.
        ``"codebook"``); None offers every model.
    capability_hint : str
        What to do when no model has the capability (shown in the info line and the refusal).

    Signals
    -------
    model_changed(object)
        The newly loaded :class:`~napari_dgseg.core.bundle.Bundle`.
    loading_changed(bool)
        True while a bundle is being loaded.
    """

    model_changed = Signal(object)
    loading_changed = Signal(bool)

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        autoload: bool = True,
        capability: str | None = None,
        capability_hint: str = "",
    ) -> None:
        super().__init__(parent)
        self._bundle: Any = None
        self._loaded_key: str | None = None
        self.capability = capability
        self.capability_hint = capability_hint
        self._runner = TaskRunner("Loading model", self, error_prefix="could not load the model: ")
        self._runner.succeeded.connect(self._on_loaded)
        self._runner.failed.connect(self._on_failed)
        self._runner.finished.connect(lambda: self.loading_changed.emit(False))
        self._pending_key: str | None = None

        self.combo = QComboBox()
        self.combo.setToolTip("Shipped models and those in your model folder")
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.combo.setMinimumContentsLength(14)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setToolTip("Open a .dgseg model file")
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("Re-scan the model folders (after training or adapting)")
        self.refresh_button.setFixedWidth(32)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setStyleSheet("color: palette(mid);")

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.info)

        self.browse_button.clicked.connect(self.browse)
        self.refresh_button.clicked.connect(lambda: self.refresh())
        self.combo.activated.connect(self._on_activated)
        self.refresh()
        if autoload and self.combo.currentData() is not None:
            self.load(self.combo.currentData())

    # -------------------------------------------------------------- state
    @property
    def bundle(self) -> Any:
        """The loaded bundle, or None."""
        return self._bundle

    @property
    def loading(self) -> bool:
        return self._runner.running

    @property
    def runner(self) -> TaskRunner:
        return self._runner

    def wait(self, timeout: float = 120.0) -> bool:
        """Process Qt events until a model load in progress has ended (scripts, tests)."""
        return self._runner.wait(timeout)

    def refresh(self) -> None:
        """Re-list the shipped and user bundles, keeping the loaded model selected."""
        from napari_dgseg.core.bundle import list_bundles
        from napari_dgseg.core.errors import DgsegError

        try:
            rows = list_bundles()
        except (OSError, DgsegError) as exc:
            rows = []
            notify(f"cannot list the model folders: {exc}", "warning")
        self.combo.blockSignals(True)
        self.combo.clear()
        broken = [r for r in rows if r.get("broken")]
        rows = [r for r in rows if not r.get("broken")
                and family_supports(r.get("family"), self.capability)]
        for row in rows:
            label = f"{row['name']} ({row['family']}{', yours' if row['where'] == 'user' else ''})"
            if row.get("default"):
                label += " - default"
            self.combo.addItem(label, str(row["path"]))
            self.combo.setItemData(
                self.combo.count() - 1, row.get("description", ""), Qt.ItemDataRole.ToolTipRole
            )
        for row in broken:  # listed, greyed out, with the reason: one bad file hides nothing
            self.combo.addItem(f"{row['name']} (broken)", str(row["path"]))
            index = self.combo.count() - 1
            self.combo.setItemData(index, row["broken"], Qt.ItemDataRole.ToolTipRole)
            item = self.combo.model().item(index)
            if item is not None:
                item.setEnabled(False)
        if self._loaded_key is not None and self._find(self._loaded_key) < 0:
            self._add_file_item(self._loaded_key)
        if self._loaded_key is not None:
            self.combo.setCurrentIndex(self._find(self._loaded_key))
        if not rows and self._loaded_key is None:
            self.combo.setCurrentIndex(-1)  # only broken bundles: select (and autoload) nothing
        self.combo.blockSignals(False)
        if not rows and self._loaded_key is None:
            self.info.setText(
                self.capability_hint
                or "No models found. Use Browse… to open a .dgseg file, or train one with "
                "`dgseg train`."
            )

    def _find(self, key: str) -> int:
        for i in range(self.combo.count()):
            if self.combo.itemData(i) == key:
                return i
        return -1

    def _add_file_item(self, path: str) -> int:
        self.combo.addItem(f"{Path(path).name} (file)", path)
        return self.combo.count() - 1

    # -------------------------------------------------------------- loading
    def browse(self) -> None:
        """Ask for a ``.dgseg`` file and load it."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a napari-dgseg model", "", "napari-dgseg models (*.dgseg);;All files (*)"
        )
        if path:
            self.load(path)

    def _on_activated(self, index: int) -> None:
        key = self.combo.itemData(index)
        if key is not None and key != self._loaded_key:
            self.load(key)

    def load(self, name_or_path: str | os.PathLike, *, sync: bool = False) -> Any:
        """Load a bundle by name or path in a worker; on failure keep the previous model.

        Parameters
        ----------
        name_or_path : str or path
            A bundle name (shipped or user) or a ``.dgseg`` file.
        sync : bool
            Load in the calling thread and return the bundle (None if it failed).

        Returns
        -------
        Bundle or None
            The loaded bundle for a synchronous load; None when loading in a worker.
        """
        if self._runner.running:
            notify("a model is already loading; wait for it to finish", "warning")
            return None
        key = str(name_or_path)
        self._pending_key = key
        self.info.setText(f"Loading {Path(key).name}…")
        self.loading_changed.emit(True)

        capability, hint = self.capability, self.capability_hint

        def work(progress: ProgressFn, cancel: threading.Event) -> Any:
            from napari_dgseg.core.bundle import load_bundle
            from napari_dgseg.core.errors import InputError

            bundle = load_bundle(key)
            if capability is not None and not bundle.family.supports(capability):
                raise InputError(
                    f"{bundle.name!r} is a {bundle.family_name!r} model without {capability} "
                    f"support; {hint or 'pick another model'}"
                )
            _ = bundle.model  # build the network now: weight/config mismatches surface here
            return bundle

        outcome = self._runner.start(work, sync=sync, description="Loading model")
        return outcome.value if outcome is not None and outcome.ok else None

    def _on_loaded(self, bundle: Any) -> None:
        key = str(bundle.path) if bundle.path is not None else self._pending_key
        self._bundle = bundle
        self._loaded_key = key
        self.combo.blockSignals(True)
        index = self._find(key) if key is not None else -1
        if index < 0 and key is not None:
            index = self._add_file_item(key)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)
        self.info.setText(describe_bundle(bundle.manifest))
        self.info.setToolTip(str(bundle.manifest.get("description", "")))
        self.model_changed.emit(bundle)

    def _on_failed(self, message: str) -> None:
        self.combo.blockSignals(True)
        if self._loaded_key is not None:
            self.combo.setCurrentIndex(self._find(self._loaded_key))
        self.combo.blockSignals(False)
        if self._bundle is not None:
            self.info.setText(describe_bundle(self._bundle.manifest))
        else:
            self.info.setText("No model loaded. Pick one above or use Browse….")
