"""STS evaluation of a sentence encoder checkpoint or exported `.onnx` model.

    python -m sts.evaluate MODEL.ckpt|MODEL.onnx [--sts en=stsb-en-dev.csv de=... ru=...] [--max_length 256]

Prints one JSON object: Spearman x 100 of cosine vs gold per language. Sentences are cut at the encoder's own
maximum length (256 for all-MiniLM-L6-v2, from its sentence_bert_config.json), not at the shorter training
length: the English WordPiece vocabulary splits Cyrillic into many pieces, and a short cut truncates Russian.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.data_dir import resolve_data_dir
from core.hf_import import sentence_max_length
from sts.data import read_sts
from sts.module import SentenceEncoderModule, evaluate_sts
from sts.task import SentenceEncodingTask


def default_files(data_dir: str | None = None) -> dict[str, Path]:
    """STS-B dev in en, de and ru under the data folder."""
    folder = resolve_data_dir(data_dir, "stsb")
    return {lang: folder / f"stsb-{lang}-dev.csv" for lang in ("en", "de", "ru")}


def evaluate(module: SentenceEncoderModule, files: dict[str, Path], max_length: int | None = None,
             batch_size: int = 128) -> dict[str, float]:
    """{"spearman_<lang>": Spearman x 100} of `module` on each STS file, inputs cut at `max_length`
    (default: the encoder's own maximum)."""
    module.max_length = max_length or sentence_max_length() or module.bert.cfg.max_position_embeddings
    return {f"spearman_{lang}": evaluate_sts(module, read_sts(path), batch_size) for lang, path in files.items()}


def main(argv: list[str] | None = None) -> dict:
    """Parse, evaluate, print JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a sentence-encoder checkpoint (.ckpt) or an exported model (.onnx)")
    p.add_argument("--sts", nargs="+", metavar="LANG=CSV", help="STS files (default: STS-B dev en, de, ru)")
    p.add_argument("--data_dir", default=None, help="folder holding stsb/ (default: $DATA_DIR or ../shared/data)")
    p.add_argument("--max_length", type=int, default=None, help="sub-tokens per sentence (default: the encoder's)")
    p.add_argument("--batch_size", type=int, default=128)
    args = p.parse_args(argv)
    files = dict(item.split("=", 1) for item in args.sts) if args.sts else default_files(args.data_dir)
    module = SentenceEncodingTask().load(args.model)
    scores = {**evaluate(module, {k: Path(v) for k, v in files.items()}, args.max_length, args.batch_size),
              "max_length": module.max_length, "model": args.model}
    print(json.dumps(scores, indent=2))
    return scores


if __name__ == "__main__":
    main()
