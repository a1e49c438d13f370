"""Translate a file with a trained checkpoint and score it against a reference.

    python -m nmt.translate --ckpt RUN/checkpoints/swa.ckpt --input test.en --output hyp.de \
        [--reference test.de] [--beam 5] [--length_penalty 0.6]

Several `--ckpt` files (trained on one vocabulary) decode as an ensemble (`nmt.ensemble`).

Writes the hypotheses (one a line) and, with a reference, `<output>.scores.json` holding
sacreBLEU BLEU and chrF with their signatures.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from core.config import load_module
from nmt.data import pad
from nmt.ensemble import ensemble_translator
from nmt.module import TranslationModule, corpus_scores
from nmt.vocab import EOS_ID


def load_translator(ckpt: str | Path, map_location: str = "cpu") -> TranslationModule:
    """A TranslationModule in eval mode, rebuilt from the checkpoint alone (weights + vocabulary); an `.onnx`
    file exported by `export.py` decodes on ONNX Runtime with the same search."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".onnx":
        from core.tasks import get_task  # nmt.task imports this module: resolve the task at call time

        module = get_task(TranslationModule.task_name).load(path)
    else:
        module = load_module(TranslationModule, path, map_location=map_location)
    if module.vocab is None:
        raise ValueError(f"checkpoint {path} holds no vocabulary; was it written by nmt.module.TranslationModule?")
    return module.eval()


def translate_lines(module: TranslationModule, lines: list[str], beam_size: int = 5,
                    max_tokens: int = 6000) -> list[str]:
    """Detokenised translations of `lines`, decoded in length-sorted token-budget batches."""
    ids = [s + [EOS_ID] for s in module.vocab.encode_src(lines)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(lines)
    start = 0
    while start < len(order):
        longest = len(ids[order[start]])
        end = start
        while end < len(order) and max(longest, len(ids[order[end]])) * (end - start + 1) <= max_tokens:
            longest = max(longest, len(ids[order[end]]))
            end += 1
        end = max(end, start + 1)
        src = pad([ids[i] for i in order[start:end]])
        hyps = module.vocab.decode_tgt(module.translate(src.to(module.device), beam_size))
        for i, hyp in zip(order[start:end], hyps, strict=True):
            out[i] = hyp
        start = end
    return out


def evaluate_file(module: TranslationModule, src_file: Path, ref_file: Path, beam_size: int) -> dict:
    """Translate `src_file`, score against `ref_file`; adds sentences per second."""
    src = src_file.read_text(encoding="utf-8").splitlines()
    refs = ref_file.read_text(encoding="utf-8").splitlines()
    if len(src) != len(refs):
        raise ValueError(f"{src_file} has {len(src)} lines but reference {ref_file} has {len(refs)}")
    start = time.perf_counter()
    hyps = translate_lines(module, src, beam_size)
    seconds = time.perf_counter() - start
    return {**corpus_scores(hyps, refs), "beam_size": beam_size, "sents_per_s": len(src) / seconds,
            "hypotheses": hyps}


def main(argv: list[str] | None = None) -> None:
    """Translate `--input`, write `--output`, and with `--reference` score it (sacreBLEU)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, nargs="+",
                        help="checkpoint, or the .onnx encoder file export.py wrote; several checkpoints: an ensemble")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--length_penalty", type=float)
    args = parser.parse_args(argv)
    modules = [load_translator(ckpt) for ckpt in args.ckpt]
    module = modules[0] if len(modules) == 1 else ensemble_translator(modules, args.ckpt)
    if args.length_penalty is not None:
        module.decoding = replace(module.decoding, length_penalty=args.length_penalty)
    if args.reference:
        result = evaluate_file(module, args.input, args.reference, args.beam)
        hyps = result.pop("hypotheses")
        scores_path = args.output.with_name(args.output.name + ".scores.json")
        scores_path.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    else:
        hyps = translate_lines(module, args.input.read_text(encoding="utf-8").splitlines(), args.beam)
    args.output.write_text("\n".join(hyps) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
