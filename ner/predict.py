"""Tag raw text or a CoNLL file with a trained tagger checkpoint; write CoNLL output.

    python -m ner.predict run/checkpoints/last.ckpt input.txt output.conll

Raw text: one sentence a line, tokens separated by whitespace, blank lines between documents
-> `token pred` lines.
CoNLL input (any column count, tag last, IOB1 or IOB2) -> `token gold pred` lines (gold in
IOB2). Sentences are separated by blank lines. The checkpoint alone is enough.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ner.conll import TAG_RE, Sentence, read_conll, to_iob2
from ner.module import TaggerModule


def detect_format(path: Path) -> str:
    """'conll' if the file has -DOCSTART- or every non-blank line is `token ... tag` with one column count."""
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if any(fields[0] == "-DOCSTART-" for fields in lines):
        return "conll"
    widths = {len(fields) for fields in lines}
    if len(widths) == 1 and widths.pop() >= 2 and all(TAG_RE.match(fields[-1]) for fields in lines):
        return "conll"
    return "text"


def read_input(path: Path, fmt: str) -> tuple[list[Sentence], bool]:
    """Sentences to tag and whether they carry gold tags."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "conll":
        sentences, _ = to_iob2(read_conll(path))
        return sentences, True
    sentences, document = [], 0
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            sentences.append(Sentence(line.split(), [], f"{path}:{i}", document))
        elif sentences:  # a blank line ends a document (context for models trained with it)
            document += 1
    return sentences, False


def load_tagger(path: str | Path) -> TaggerModule:
    """A TaggerModule from a checkpoint, or from an `.onnx` file exported by `export.py` (runs on ONNX Runtime)."""
    from core.tasks import get_task  # ner.task imports this package's modules: resolve the task at call time

    return get_task(TaggerModule.task_name).load(path)


def predict_file(
    checkpoint: str | Path, input_path: str | Path, output_path: str | Path, fmt: str = "auto",
    batch_size: int = 32, constrained: bool | None = None,
) -> int:
    """Tag `input_path` into `output_path`; returns the number of sentences.

    `constrained` overrides the checkpoint's decoding: True decodes a softmax tagger by
    IOB2-constrained Viterbi, False by per-word argmax (a CRF tagger always uses its Viterbi).
    """
    model = load_tagger(checkpoint)
    if constrained is not None:
        model.constrained_decoding = constrained
    sentences, has_gold = read_input(Path(input_path), fmt)
    if has_gold:  # unknown gold tags are an error, not a silent mis-score
        for s in sentences:
            unknown = sorted(set(s.tags) - set(model.labels))
            if unknown:
                raise ValueError(f"{s.source}: tags {unknown} are not among the model's labels "
                                 f"{model.labels}")
    predicted = model.tag([s.tokens for s in sentences], batch_size=batch_size,
                          documents=[s.document for s in sentences])
    with open(output_path, "w", encoding="utf-8") as out:
        for s, tags in zip(sentences, predicted, strict=True):
            for i, token in enumerate(s.tokens):
                out.write(f"{token} {s.tags[i]} {tags[i]}\n" if has_gold else f"{token} {tags[i]}\n")
            out.write("\n")
    return len(sentences)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="tagger checkpoint (e.g. .../last.ckpt) or exported .onnx")
    parser.add_argument("input", help="raw text (one sentence a line) or a CoNLL file")
    parser.add_argument("output", help="CoNLL output file to write")
    parser.add_argument("--format", choices=["auto", "text", "conll"], default="auto",
                        help="input format (auto: CoNLL if -DOCSTART- or consistent token/tag columns)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None,
                        help="IOB2-constrained Viterbi decoding (default: as the checkpoint was configured)")
    args = parser.parse_args(argv)
    n = predict_file(args.checkpoint, args.input, args.output, args.format, args.batch_size, args.constrained)
    print(f"tagged {n} sentences -> {args.output}")


if __name__ == "__main__":
    main()
