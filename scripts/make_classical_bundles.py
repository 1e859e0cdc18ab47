"""Write the classical baselines as bundles (``classical-he.dgseg``, ``classical-fundus.dgseg``).

They hold no weights (an empty weights file) and no colour bank: only the manifest with the
method's parameters, so the model picker, ``dgseg predict --model classical-he`` and the
benchmarks treat the baseline like any model.

    python scripts/make_classical_bundles.py --out src/napari_dgseg/bundles --overwrite
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

SPECS = {
    "classical-he": ("classical-he", "nuclei", ("background", "nucleus")),
    "classical-fundus": ("classical-fundus", "vessels", ("background", "vessel")),
}


def main() -> None:
    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="src/napari_dgseg/bundles", help="folder to write into")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    for name, (family, task, classes) in SPECS.items():
        fam = get_family(family)
        cfg = fam.make_config({})
        bundle = Bundle.create(
            fam.build_model(cfg), family, cfg, name=name, class_names=classes, task=task,
            description=fam.description,
            provenance={"command": "python scripts/make_classical_bundles.py --out "
                        f"{args.out} --overwrite", "trained": False, "val_metrics": {},
                        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        )
        path = Path(args.out) / f"{name}.dgseg"
        bundle.save(path, overwrite=args.overwrite)
        print(path)


if __name__ == "__main__":
    main()
