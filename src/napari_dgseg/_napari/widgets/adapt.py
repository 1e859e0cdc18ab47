"""The Adapt dock widget: MaNi label-free adaptation of a model to the open target images.

The user picks a model and one or more target Image layers (tiles, regions of a slide), the number
of iterations and the learning rate, and presses Run. Every job runs in the widget's
:class:`~napari_dgseg._napari.runner.TaskRunner` (one at a time) with the jobs of
:mod:`napari_dgseg._napari.adapt_job`: reading the targets, the parent's "before" prediction and
the adaptation (:func:`napari_dgseg.core.train.adapt.adapt_steps`, on a deep copy of the model),
the "after" prediction of *Compare*, and writing the bundle of *Save* all happen in the worker.
Every iteration its losses reach the live plot
(:class:`~napari_dgseg._napari.widgets.loss_plot.LossPlot`), and every few iterations a preview of
the current prediction on the first target replaces the data of the "adapt preview" labels layer
(in the GUI thread; the layer itself is added, empty, when Run is pressed, before the worker
starts). Cancel stops the run: the loaded model is untouched, and what was adapted so far can
still be saved or dropped. Save writes a new versioned bundle (``<parent>-adapted-<n>``) into the
user model folder. Compare shows the parent's and the adapted model's labels over the image
they came from (its scale, translate and units).
Labels layers with the shape of a target image (corrected masks) can join the run as labelled
target data. *Statistics only* is the fast alternative: it re-estimates the BatchNorm statistics
on the targets (seconds, no training). Every run judges itself on held-out targets with the
label-free signal of :mod:`napari_dgseg.core.train.selection`; the widget shows parent vs
adapted, and Save asks for a second click when the adapted model looks worse.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_dgseg._napari.adapt_job import AdaptJob, check_target, compare_job, save_job
from napari_dgseg._napari.display import style_labels_for
from napari_dgseg._napari.layers import source_units
from napari_dgseg._napari.notify import notify, one_line
from napari_dgseg._napari.runner import TaskRunner, sync_workers
from napari_dgseg._napari.staged_add import StagedAdd
from napari_dgseg._napari.widgets._common import scroll_content
from napari_dgseg._napari.widgets.loss_plot import LossPlot
from napari_dgseg._napari.widgets.model_picker import ModelPicker
from napari_dgseg._napari.writer import prefer_own_writers
from napari_dgseg.core.errors import DgsegError, InputError

__all__ = ["PREVIEW_NAME", "AdaptWidget", "signal_text"]

PREVIEW_NAME = "adapt preview"


def signal_text(selection: dict | None) -> str:
    """One line: parent vs adapted on the label-free signal, and what that means."""
    if not selection:
        return ""
    p, a = selection["parent"], selection["adapted"]
    where = (f"{selection['held_out_images']} held-out target(s)" if selection.get("held_out")
             else "the targets (too few to hold any out)")
    ref = selection.get("reference_foreground")
    ref_txt = f", target-statistics estimate {ref:.2f}" if ref is not None else ""
    head = (f"Label-free check on {where}: nucleus fraction parent {p['foreground']:.2f} → "
            f"adapted {a['foreground']:.2f}{ref_txt}; score {p['score']:.3f} → {a['score']:.3f} "
            f"(certainty {p['certainty']:.2f} → {a['certainty']:.2f}). ")
    if selection.get("returned") and not selection.get("returned_parent_weights"):
        head += f"Returned: {selection['returned']}. "
    note = selection.get("guard_note")
    if note:  # the drift guard ruled out checkpoints the score alone would have returned
        head += f"{note[:1].upper()}{note[1:]}. "
    if selection.get("verdict") == "better":
        return head + "Looks better than the parent."
    if selection.get("returned_parent_weights"):
        return head + "No checkpoint beat the parent: the parent's weights were kept."
    return head + "⚠ Looks worse than the parent."


class AdaptWidget(QWidget):
    """Dock widget: adapt a model to target image layers with MaNi, preview, compare, save."""

    run_finished = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_dgseg._napari.warm import warm_layer_imports

        warm_layer_imports()  # now, not when the first preview layer is built (see warm.py)
        self.viewer = napari_viewer
        self.result: Any = None  # the adapted Bundle of the last run
        self.saved_path: Path | None = None
        self.runner = TaskRunner("Adapting", self)
        self.runner.yielded.connect(self._on_yielded)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.finished.connect(self._on_finished)
        self._job = ""  # the running/last job: "adapt", "compare" or "save"
        self._save_target: Path | None = None
        self._preview_source: str | None = None
        self._before: np.ndarray | None = None

        self.model_picker = ModelPicker(self)
        self.targets = QListWidget()
        self.targets.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.targets.setToolTip(
            "Target image layers (unlabelled images of the new domain); select one or many"
        )
        self.targets.setMaximumHeight(110)
        self.use_labels = QCheckBox("Use matching Labels layers as labelled target data")
        self.use_labels.setToolTip(
            "A Labels layer with the shape of a target image (a corrected mask) joins the run"
        )
        self.labels_info = QLabel("")
        self.labels_info.setWordWrap(True)
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText(
            "(optional) labelled source folder; default: the model's replay set"
        )
        self.source_button = QPushButton("…")
        self.source_button.setFixedWidth(32)
        self.iters_spin = QSpinBox()
        self.iters_spin.setRange(1, 100000)
        self.iters_spin.setValue(200)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1e-1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-4)
        self.size_spin = QSpinBox()
        self.size_spin.setRange(32, 1024)
        self.size_spin.setSingleStep(32)
        self.size_spin.setValue(256)
        self.size_spin.setToolTip("Crop side; targets must be at least this large")
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(1, 10000)
        self.preview_spin.setValue(20)
        self.local_check = QCheckBox("Local alignment (local feature masks)")
        self.local_check.setToolTip(
            "Mind the Gap's local alignment during Run: a pixel-wise domain discriminator (D1) "
            "finds where target features differ from the source, those features are reweighted "
            "and aligned, plus an output-space discriminator (D2). The adapted model then shows "
            "a 'local mask' layer (domain gap per pixel) with every segmentation"
        )
        self.run_button = QPushButton("Run")
        self.stats_button = QPushButton("Statistics only (fast)")
        self.signal_label = QLabel("")
        self.signal_label.setWordWrap(True)
        self._save_confirmed = False
        self.cancel_button = QPushButton("Cancel")
        self.save_button = QPushButton("Save as new version")
        self.compare_button = QPushButton("Compare before / after")
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText(
            "new bundle path (default: next <model>-adapted-<n> in your model folder)"
        )
        self.plot = LossPlot()
        self.status = QLabel("Pick a model and target image layers, then Run.")
        self.status.setWordWrap(True)
        for control, tip in (
            (self.source_edit, "Folder of labelled source-domain images replayed during "
             "adaptation so the model keeps what it knew; empty: the replay set in the model"),
            (self.source_button, "Choose the labelled source folder"),
            (self.iters_spin, "Optimisation steps; more adapts further and takes longer"),
            (self.lr_spin, "Learning rate of the adaptation steps; lower is safer"),
            (self.preview_spin, "Update the preview mask and loss plot every this many steps"),
            (self.run_button, "Adapt a copy of the model to the target layers with MaNi in the "
             "background; the loaded model is untouched"),
            (self.stats_button, "Re-estimate the model's normalisation statistics on the target "
             "layers: seconds, no training (best for stain, scanner and focus changes)"),
            (self.signal_label, "Label-free check on held-out target layers: how far the "
             "predicted nucleus fraction is from that of the model with target statistics "
             "(closer is better)"),
            (self.cancel_button, "Stop after the current step; what was adapted so far can "
             "still be saved"),
            (self.save_edit, "Where to save the adapted model (.dgseg); empty: the next "
             "<model>-adapted-<n> in your model folder"),
            (self.save_button, "Save the adapted model as a new bundle version"),
            (self.compare_button, "Segment the first target with the model before and after "
             "adaptation, side by side"),
        ):
            control.setToolTip(tip)

        form = QFormLayout()
        form.addRow("Model", self.model_picker)
        form.addRow("Targets", self.targets)
        form.addRow("", self.use_labels)
        form.addRow("", self.labels_info)
        src_row = QHBoxLayout()
        src_row.addWidget(self.source_edit, 1)
        src_row.addWidget(self.source_button)
        form.addRow("Source", src_row)
        form.addRow("Iterations", self.iters_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Crop size", self.size_spin)
        form.addRow("Preview every", self.preview_spin)
        form.addRow("", self.local_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stats_button)
        buttons.addWidget(self.cancel_button)
        after = QHBoxLayout()
        after.addWidget(self.save_button)
        after.addWidget(self.compare_button)
        layout = QVBoxLayout(scroll_content(self))  # scrolls, never squeezes
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addWidget(self.signal_label)
        layout.addWidget(self.save_edit)
        layout.addLayout(after)
        layout.addStretch(1)

        self.run_button.clicked.connect(lambda: self.run())
        self.stats_button.clicked.connect(lambda: self.run(method="stats"))
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save())
        self.compare_button.clicked.connect(lambda: self.compare())
        self.source_button.clicked.connect(self._browse_source)
        self.targets.itemSelectionChanged.connect(self._update_controls)
        self.model_picker.model_changed.connect(lambda *_: self._update_controls())
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved):
            ev.connect(self.refresh_layers)
        self.refresh_layers()

    # ------------------------------------------------------------------ layers
    def refresh_layers(self, *_: Any) -> None:
        """Re-list the Image layers, keeping the selection."""
        from napari.layers import Image

        chosen = {it.text() for it in self.targets.selectedItems()}
        self.targets.blockSignals(True)
        self.targets.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                item = QListWidgetItem(layer.name)
                self.targets.addItem(item)
                item.setSelected(layer.name in chosen)
        self.targets.blockSignals(False)
        self._update_controls()

    def select_targets(self, names: list[str]) -> None:
        """Select the target layers by name."""
        for i in range(self.targets.count()):
            item = self.targets.item(i)
            item.setSelected(item.text() in names)

    def selected_layers(self) -> list[Any]:
        """The selected target layers, in layer-list order."""
        names = {it.text() for it in self.targets.selectedItems()}
        return [lay for lay in self.viewer.layers if lay.name in names]

    def matching_labels(self, layers: list[Any]) -> dict[str, Any]:
        """Target name -> a Labels layer of the same 2-D shape (a corrected mask), where one exists."""
        from napari.layers import Labels

        out: dict[str, Any] = {}
        for target in layers:
            shape = (
                target.data.shape[:2]
                if not getattr(target, "multiscale", False)
                else target.data[0].shape[:2]
            )
            for lay in self.viewer.layers:
                if (
                    isinstance(lay, Labels)
                    and "what"
                    not in (lay.metadata or {}).get("provenance", {})  # preview, before/after
                    and tuple(lay.data.shape) == tuple(shape)
                ):
                    out[target.name] = lay
                    break
        return out

    def _update_controls(self, *_: Any) -> None:
        layers = self.selected_layers()
        matches = self.matching_labels(layers)
        self.use_labels.setEnabled(bool(matches) and not self.running)
        self.labels_info.setText(
            ", ".join(f"{t} ← {lab.name}" for t, lab in matches.items()) if matches else ""
        )
        self.run_button.setEnabled(not self.running)
        self.stats_button.setEnabled(not self.running)
        self.cancel_button.setEnabled(self.running)
        self.save_button.setEnabled(self.result is not None and not self.running)
        self.compare_button.setEnabled(self.result is not None and not self.running)

    def _browse_source(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Labelled source folder (images/ + labels/)"
        )
        if folder:
            self.source_edit.setText(folder)

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        """True while a job (adaptation, comparison or saving) runs."""
        return self.runner.running

    def run(
        self, targets: list[Any] | None = None, *, sync: bool = False, method: str = "mani"
    ) -> bool:
        """Start adapting; returns False (with a notification) on bad input.

        The targets are only checked here (type and shape); they are read, the parent's
        "before" labels predicted and the model adapted in the worker.

        Parameters
        ----------
        targets : list of layers, optional
            Target layers (default: the selected ones).
        sync : bool
            Run in the calling thread (tests; also with ``$DGSEG_SYNC_WORKERS=1``).
        method : str
            ``mani`` (Run) or ``stats`` (Statistics only).
        """
        from napari.layers import Image, Labels

        if self.running:
            notify("an adaptation is already running; cancel it first", "warning")
            return False
        bundle = self.model_picker.bundle
        layers = self.selected_layers() if targets is None else list(targets)
        try:
            if bundle is None:
                raise InputError("no model loaded; pick one in the Model list")
            if not layers:
                raise InputError(
                    "no target layers selected; select one or more Image layers of the new domain"
                )
            for lay in layers:
                if isinstance(lay, Labels):
                    raise InputError(
                        f"{lay.name!r} is a Labels layer; targets are images. Tick 'Use matching "
                        "Labels layers' to use corrected masks as labelled target data"
                    )
                if not isinstance(lay, Image):
                    raise InputError(
                        f"{lay.name!r} is not an Image layer; choose image layers as targets"
                    )
            planes = [(check_target(lay), lay.name) for lay in layers]
            labels = None
            if self.use_labels.isChecked():
                matches = self.matching_labels(layers)
                labels = [matches[lay.name].data if lay.name in matches else None for lay in layers]
            source = self.source_edit.text().strip() or None
        except DgsegError as exc:
            notify(exc)
            self.status.setText(one_line(exc))
            return False
        self._preview_source = layers[0].name
        self._before = None
        self.result = None
        self._save_confirmed = False
        self.save_button.setText("Save as new version")
        self.signal_label.setText("")
        self.plot.clear()
        params = {
            "source": source,
            "iters": int(self.iters_spin.value()),
            "lr": float(self.lr_spin.value()),
            "size": int(self.size_spin.value()),
            "preview_every": int(self.preview_spin.value()),
            "name": None,
            "command": f"napari AdaptWidget ({method}) on layers {[lay.name for lay in layers]}",
            "method": method,
        }
        if method == "mani" and self.local_check.isChecked():
            params["local_alignment"] = True  # D1 + D2 (Mind the Gap), D1 kept in the bundle
        start: Any = self.runner.start
        if method == "mani" and PREVIEW_NAME not in self.viewer.layers:
            # the preview layer now, empty, before the worker starts: napari builds a Labels layer
            # in the GUI thread (about 0.1 s), which at the first preview stalled the running job;
            # built in this turn, put in over the next few (staged_add), the worker waits for it
            staging = StagedAdd(self.viewer, self._new_labels(
                PREVIEW_NAME, np.zeros(planes[0][0].shape[:2], np.int32)))
            start = partial(staging.start_job, self.runner.start)
            sync = sync or sync_workers()
        how = "Re-estimating the statistics of" if method == "stats" else "Adapting"
        self.status.setText(f"{how} {bundle.name} to {len(layers)} target layer(s)…")
        self._job = "adapt"
        start(
            AdaptJob(bundle, planes, labels, params),
            sync=sync,
            description=f"Adapting {bundle.name}",
            on_result=self._on_adapted,
            keep_result_on_cancel=True,
        )
        self._update_controls()
        return True

    def cancel(self) -> None:
        """Stop the job; the adapted-so-far model can still be saved, the loaded one is untouched."""
        if self.running:
            self.runner.cancel()
            self.status.setText("Stopping…")

    def _on_yielded(self, item: Any) -> None:
        kind, value = item
        if kind == "before":
            self._before = value
            return
        step = value
        self.plot.add(step.iteration, step.logs)
        if "signal" in step.logs:
            self.signal_label.setText(
                f"label-free signal at iteration {step.iteration}: {step.logs['signal']:.3f}"
            )
        if step.logs.get("stats"):
            self.status.setText("Normalisation statistics re-estimated on the targets.")
            return
        self.status.setText(
            f"iteration {step.iteration}/{step.iters}: seg {step.logs['seg']:.3f}"
            + ("" if step.logs.get("warmup") else f", MI {step.logs['mi']:.3f}")
            + (" (warm-up)" if step.logs.get("warmup") else "")
        )
        if step.preview is not None:
            self._show_labels(PREVIEW_NAME, step.preview)

    def _on_adapted(self, bundle: Any) -> None:
        from napari_dgseg.core.bundle import user_dir
        from napari_dgseg.core.train.adapt import next_version_path

        self.result = bundle
        prov = bundle.provenance
        self.save_edit.setText(str(next_version_path(self.model_picker.bundle.name, user_dir())))
        stopped = " (stopped early)" if prov.get("stopped_early") else ""
        what = ("Statistics re-estimated" if "statistics" in prov
                else f"Adapted for {prov['iterations']} iterations{stopped}")
        self.status.setText(
            f"{what} in {prov['seconds']} s. "
            "Save keeps it as a new model; Compare shows before / after."
        )
        self.signal_label.setText(signal_text(prov.get("selection")))
        if self.looks_worse:
            self.signal_label.setStyleSheet("color: #e8a33d;")
            notify(prov["selection"]["warning"], "warning")
        else:
            self.signal_label.setStyleSheet("")

    @property
    def looks_worse(self) -> bool:
        """True when the last result does not beat its parent on the label-free signal."""
        sel = (self.result.provenance.get("selection") or {}) if self.result is not None else {}
        return bool(sel) and sel.get("verdict") != "better"

    def _on_failed(self, message: str) -> None:  # the runner has shown the notification
        self.status.setText(message)

    def _on_cancelled(self) -> None:
        if self._job == "save":
            name = self._save_target.name if self._save_target is not None else "the model"
            self.status.setText(
                f"Save cancelled; {name} was not written and every other file is unchanged."
            )
        else:
            self.status.setText("Cancelled; nothing changed.")

    def _on_finished(self) -> None:
        self._update_controls()
        self.run_finished.emit()

    # ------------------------------------------------------------------ layers out
    def _new_labels(self, name: str, labels: np.ndarray) -> Any:
        """A Labels layer ``name`` placed on the preview source and styled, not yet added."""
        from napari.layers import Labels

        src = (
            self.viewer.layers[self._preview_source]
            if self._preview_source in self.viewer.layers
            else None
        )
        meta = {"source_layer": self._preview_source, "provenance": {"what": name}}
        placement: dict[str, Any] = {}
        if src is not None:  # the source's full placement: scale, translate and units
            placement = {
                "scale": tuple(src.scale[-2:]),
                "translate": tuple(src.translate[-2:]),
            }
            units = source_units(src, 2)
            if units is not None:
                placement["units"] = units
        prefer_own_writers()  # saved from the dialog with their placement and provenance
        layer = Labels(labels, name=name, metadata=meta, opacity=0.5, **placement)
        # the task's colours (nuclei chartreuse, vessels cyan), as the Segment widget's masks
        style_labels_for(layer, self.result or self.model_picker.bundle)
        return layer

    def _show_labels(
        self, name: str, labels: np.ndarray, translate: tuple[float, float] | None = None
    ) -> Any:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = labels
            if self._preview_source in self.viewer.layers:  # the source may have moved since
                src = self.viewer.layers[self._preview_source]
                layer.scale = tuple(src.scale[-2:])
                layer.translate = tuple(src.translate[-2:])
        else:
            layer = self.viewer.add_layer(self._new_labels(name, labels))
        if translate is not None:
            layer.translate = translate
        return layer

    def compare(self, *, sync: bool = False) -> bool:
        """Labels of the parent (before) and of the adapted model (after), side by side.

        The "after" prediction runs in the worker; the layers are added when it is done.
        Returns False (with a notification) when there is nothing to compare yet.
        """
        if (
            self.result is None
            or self._before is None
            or self._preview_source not in self.viewer.layers
        ):
            notify(
                "run an adaptation first (Compare needs its before / after predictions)", "warning"
            )
            return False
        if self.running:
            notify("wait for the running job to finish (or cancel it)", "warning")
            return False
        src = self.viewer.layers[self._preview_source]
        try:
            data = check_target(src)
        except DgsegError as exc:
            notify(exc)
            return False
        before = self._before
        self.status.setText(f"Predicting {src.name} with the adapted model…")
        self._job = "compare"

        def show(after: np.ndarray) -> None:
            if src not in self.viewer.layers:
                return
            # Both over the region they came from (the source's scale and translate), so each
            # label sits on its nuclei; the user toggles "after" to compare.
            t0 = tuple(float(v) for v in src.translate[-2:])
            self._show_labels(f"{src.name} before (parent)", before, t0)
            self._show_labels(f"{src.name} after (adapted)", after, t0)
            if PREVIEW_NAME in self.viewer.layers:
                self.viewer.layers[PREVIEW_NAME].visible = False
            self.status.setText(
                f"Before (parent) and after (adapted) of {src.name}, both over the image: toggle "
                "the 'after' layer's visibility to compare."
            )

        self.runner.start(
            compare_job(self.result, data, src.name),
            sync=sync,
            description="Comparing before / after",
            on_result=show,
        )
        self._update_controls()
        return True

    # ------------------------------------------------------------------ saving
    def save(
        self,
        path: str | Path | None = None,
        *,
        sync: bool = False,
        cancel: threading.Event | None = None,
        force: bool = False,
    ) -> Path | None:
        """Save the adapted model as a new bundle (never over the parent), in the worker.

        Parameters
        ----------
        path : str or Path, optional
            The new bundle (default: the path in the box, else the next free
            ``<parent>-adapted-<n>.dgseg`` in the user model folder).
        sync : bool
            Write in the calling thread and return the path (None if nothing was written).
        cancel : threading.Event, optional
            A cancel token for the write (a set token leaves every file unchanged).
        force : bool
            Save even when the adapted model looks worse than its parent (otherwise the first
            call only warns and the next one saves).

        Returns
        -------
        Path or None
            The saved bundle of a synchronous save; None otherwise.
        """
        from napari_dgseg.core.bundle import user_dir
        from napari_dgseg.core.train.adapt import next_version_path

        if self.result is None:
            notify("nothing to save yet: run an adaptation first", "warning")
            return None
        if self.running:
            notify("wait for the running job to finish (or cancel it)", "warning")
            return None
        if self.looks_worse and not (self._save_confirmed or force):
            self._save_confirmed = True
            self.save_button.setText("Save anyway")
            msg = (
                "The adapted model does not look better than its parent on the held-out targets "
                "(label-free signal). Press 'Save anyway' to keep it."
            )
            self.status.setText(msg)
            notify(msg, "warning")
            return None
        parent = self.model_picker.bundle
        text = str(path) if path is not None else self.save_edit.text().strip()
        target = Path(text) if text else next_version_path(parent.name, user_dir())
        if not target.name.endswith(".dgseg"):
            target = target.with_name(target.name + ".dgseg")
        if (
            parent is not None
            and parent.path is not None
            and target.exists()
            and target.resolve() == Path(parent.path).resolve()
        ):
            notify(
                f"{target} is the parent model; choose a new file name (the parent is never "
                "overwritten)"
            )
            return None
        self.result.manifest["name"] = target.name[: -len(".dgseg")]
        self.status.setText(f"Saving {target.name}…")
        saved_paths: list[Path] = []

        def done(saved: Path) -> None:
            saved_paths.append(saved)
            self.saved_path = saved
            self.save_edit.setText(str(next_version_path(parent.name, user_dir())))
            self.status.setText(
                f"Saved {saved.name} (parent sha256 "
                f"{self.result.provenance['parent']['sha256'][:12]}…)"
            )
            notify(f"saved adapted model {saved}", "info")
            self.model_picker.refresh()

        self._job = "save"
        self._save_target = target
        self.runner.start(
            save_job(self.result, target),
            sync=sync,
            description=f"Saving {target.name}",
            on_result=done,
            cancel=cancel,
        )
        self._update_controls()
        return saved_paths[0] if saved_paths else None
