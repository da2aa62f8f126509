"""Synthetic screening mammograms: the embedded default data of the demo and the tests.

`generate_dataset(out_dir, SynthConfig(num_images=N, seed=S))` writes real DICOM files (MG, For
Presentation, MONOCHROME1/2, 12-14 bits, windows / VOI LUT, some RLE or JPEG 2000 compressed, right
breasts stored mirrored, fake but realistic PHI), the canonical annotations.csv and phi.json.
`hourglass synth` is its command line. Modules: `anatomy` (breast outline, skin, pectoral muscle,
1/f^beta parenchyma), `findings` (masses, calcifications, distortions, asymmetries, loose boxes),
`dicom_writer` (pydicom), `dataset` (patients, exams, labels, files). No TensorFlow.
"""

from keras_hourglass.data.synthetic.dataset import (CSV_COLUMNS, PHI_FIELDS, ImagePlan, SynthConfig, generate_dataset,
                                                    plan_dataset, render_image)
from keras_hourglass.data.synthetic.findings import RENDERED_FINDING_TYPES

__all__ = ["CSV_COLUMNS", "PHI_FIELDS", "RENDERED_FINDING_TYPES", "ImagePlan", "SynthConfig",
           "generate_dataset", "plan_dataset", "render_image"]
