"""Copy a model's measured inference choices onto another bundle of the same recipe.

    python scripts/adopt_inference_records.py --from vessels-ram-sgcg --to out/seeds/100/vessels-ram-sgcg.dgseg

The shipped bundles carry choices measured on selection tiles after training (``inference.tta``,
``dcin.auto``, ``dcin.in_domain_shift``, each with its evidence; docs/generalization.md and
docs/dcin.md). A replicate trained with the same recipe at another seed (``SEED=100 OUT=...
bash scripts/train_shipped.sh hovernet``) has none of them, so its evaluation would not be the
product a user gets. This copies exactly those records (the weights, bank, scale and
validation scores of the target stay its own) and says so in ``inference.adopted_from``.
"""

from __future__ import annotations

import argparse
import json

from napari_dgseg.core.evaluation_record import record_in_manifest

#: (manifest section, keys) of the measured inference choices.
RECORDS = {
    "inference": ("tta", "tta_evidence", "estimate_tolerance_share", "estimate_tolerance_evidence",
                  "postprocess", "postprocess_evidence"),
    "dcin": ("auto", "auto_evidence", "in_domain_shift", "in_domain_evidence"),
}


def main() -> int:
    from napari_dgseg import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", required=True, help="bundle name or path")
    ap.add_argument("--to", dest="targets", nargs="+", required=True, help="bundle paths")
    args = ap.parse_args()
    source = load_bundle(args.source)
    for target in args.targets:
        copied = {}
        for section, keys in RECORDS.items():
            values = {k: source.manifest[section][k] for k in keys
                      if k in (source.manifest.get(section) or {})}
            if section == "inference":
                values["adopted_from"] = f"{source.name} ({source.sha256})"
            if values:
                record_in_manifest(target, section, values)
                copied[section] = sorted(values)
        print(json.dumps({"bundle": target, "from": source.name, "copied": copied}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
