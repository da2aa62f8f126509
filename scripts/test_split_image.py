"""Prints the path of one DICOM that `hourglass prepare` put in a split (the demo's "one test image").

Usage: python scripts/test_split_image.py PREP ANNOTATIONS_CSV IMAGES_ROOT [SPLIT]

Re-plans the canonical table with PREP/manifest.json's salt and split fractions
(`keras_hourglass.data.plan.plan_images`, the plan `prepare` made), so the image is one
the models never trained on. Exit 1 when the split has no image.
"""

from __future__ import annotations

import json
import os
import sys


def split_image(prep: str, annotations: str, images_root: str, split: str = "test") -> str | None:
    """Returns: the path of the first image (by prepare's order) of `split`, or None.

    Args:
        prep: PREP (its manifest.json holds the salt and the split fractions).
        annotations: the canonical annotation CSV prepare read.
        images_root: prepare's --images-root.
        split: train, val or test.
    """
    from keras_hourglass.data import plan
    from keras_hourglass.data.importers import get_importer

    with open(os.path.join(prep, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    result = get_importer("canonical")([annotations], images_root)
    fractions = manifest["splits"]
    planned, _ = plan.plan_images(result, manifest["salt"], val_fraction=float(fractions["val_fraction"]),
                                  test_fraction=float(fractions["test_fraction"]))
    return next((item.record.path for item in planned if item.split == split), None)


if __name__ == "__main__":
    path = split_image(*sys.argv[1:5])
    if path is None:
        sys.exit(f"no {sys.argv[4] if len(sys.argv) > 4 else 'test'} image")
    print(path)
