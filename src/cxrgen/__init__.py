"""cxrgen: reproducible chest X-ray report generation on the IU X-ray collection.

One sub-package per pipeline phase, each importing only the phases before it:
`data` (download, extract, prepare, labeler) → `features` (DenseNet121) → `modeling` (models,
train, decode) → `evaluation` (scores, floors, evaluate, compare) → `assistant` (CLI, app).
What several phases share sits here at the root: `errors`, `params`, `stage` (how a stage script
reports an error), `files` (atomic writes), `tables` (Parquet), `observations` (the 14 CheXpert
observations), `bootstrap` (resampling studies) and `benchmark` (for benchmarks/).
"""

__version__ = "0.1.0"
