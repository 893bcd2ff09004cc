"""DVC stage `attention_maps`: where the attention model looked, for a few test studies, as PNGs.

The maps go to one folder that `dvc plots show` includes; their captions (source, weights, split,
seed) are written beside it as JSON.
"""

import argparse
import json
from pathlib import Path

from cxrgen.files import write_json_atomic
from cxrgen.params import load_params
from cxrgen.quiet import import_tensorflow
from cxrgen.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="models/attention.keras")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--out", default="metrics/attention_maps")
    parser.add_argument("--index", default="metrics/attention_maps.json")
    args = parser.parse_args()
    params = load_params(args.params)

    import numpy as np

    import_tensorflow()
    from cxrgen.assistant.attention_maps import write_attention_examples
    from cxrgen.assistant.generate import load_provenance
    from cxrgen.data.vocab import Vocab
    from cxrgen.evaluation.evaluate import load_studies, split_texts
    from cxrgen.modeling.decode import DecodeSettings, beam_search
    from cxrgen.modeling.models import load_model
    from cxrgen.features.store import FeatureStore

    model = load_model(args.model)
    vocab = Vocab.load(Path(args.prepared) / "vocab.json")
    report_ids, _ = split_texts(load_studies(args.prepared), "test")
    count = min(args.studies, len(report_ids))
    features = FeatureStore(args.features).open("test", model.feature_key)[:count]   # only those rows are read
    images = np.load(Path(args.prepared) / "images_test.npy", mmap_mode="r")[:count]
    decoded = beam_search(model, features, DecodeSettings.from_params(params))
    words = [text.split() for text in decoded.texts(vocab)]
    out = Path(args.out)
    written = write_attention_examples(out, np.asarray(images), words, list(decoded.attention),
                                       load_provenance(".", "attention"), report_ids[:count],
                                       max_studies=count)
    index = out / "index.json"
    write_json_atomic(args.index, json.loads(index.read_text()))
    index.unlink()  # the folder holds images only, for `dvc plots show`
    print(f"attention_maps: {len(written)} maps of {count} test studies in {out}", flush=True)


if __name__ == "__main__":
    run_stage("attention_maps", main)
