"""Synthetic labelled customer feedback (text + product photo + voice note, optionally a video
clip) in the contract format.

See docs/generator.md for the generative story, the knobs and the corrupt-record bounds.
"""

from synthetic.generator import (
    DATASET_NAME,
    EXPECTED_REJECTS_FILE,
    GenerateSummary,
    GeneratorKnobs,
    dataset_spec,
    generate_dataset,
)

__all__ = [
    "DATASET_NAME",
    "EXPECTED_REJECTS_FILE",
    "GenerateSummary",
    "GeneratorKnobs",
    "dataset_spec",
    "generate_dataset",
]
