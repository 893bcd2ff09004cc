"""Phase 1, data: from the two IU X-ray archives to the tables and arrays every later stage reads.

`download` and `sources/` (torrent, HTTPS, a local folder, a synthetic generator) deliver the two
archives checked by `archives`; `extract` reads their XML into `reports.parquet` / `images.parquet`;
`prepare` cleans the text (`text`), splits (`split`), pairs the two views (`pairs`), resizes the
images (`images`) and builds the vocabulary (`vocab`). `labeler` reads the 14 CheXpert observations
out of report text: training reads its finding targets through it, evaluation scores generated text
with it.
"""
