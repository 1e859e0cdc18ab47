"""The built-in model families, one folder each.

Every folder holds what its family needs (network, losses, targets, post-processing,
augmentation) and builds its :class:`~napari_dgseg.core.family.Family` in ``__init__.py``.
A family imports only generic core modules (:mod:`napari_dgseg.core.models` for the base class
and shared blocks, :mod:`napari_dgseg.core.losses`, :mod:`napari_dgseg.core.augment_cqg`,
:mod:`napari_dgseg.core.postprocess`, ...), never another family and never the inference or
training code; ``tests/test_import_graph.py`` checks it.
"""
