"""A synthetic WMT-size parallel corpus from Multi30k train, with deterministic noise (no download).

    python -m benchmarks.scale.make_corpus [--pairs 4500000] [--out benchmarks/work/scale/synthetic]

Pair i is Multi30k train pair i mod 29k with up to two adjacent words swapped and one word dropped on each side
(seeded by its block of 100k pairs), so the corpus has the real length distribution and vocabulary but few exact
duplicates. Writes train.en / train.de (and copies val / test2016) in the `<split>.<lang>` layout both data paths read.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from core.data_dir import resolve_data_dir

REPO = Path(__file__).resolve().parents[2]


def noisy(words: list[str], rng: np.random.Generator) -> str:
    """`words` with up to two adjacent swaps and one drop (sentences of 3+ words keep at least 2)."""
    words = list(words)
    for _ in range(int(rng.integers(0, 3))):
        if len(words) > 2:
            j = int(rng.integers(0, len(words) - 1))
            words[j], words[j + 1] = words[j + 1], words[j]
    if len(words) > 3 and rng.random() < 0.5:
        del words[int(rng.integers(0, len(words)))]
    return " ".join(words)


def make(pairs: int, out: Path, data_dir: str | None = None, block: int = 100_000) -> Path:
    """Write the corpus into `out` (block by block, so memory stays flat); returns `out`."""
    src = resolve_data_dir(data_dir, "multi30k")
    en = [line.split() for line in (src / "train.en").read_text(encoding="utf-8").splitlines()]
    de = [line.split() for line in (src / "train.de").read_text(encoding="utf-8").splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.en").open("w", encoding="utf-8") as fen, (out / "train.de").open("w", encoding="utf-8") as fde:
        for start in range(0, pairs, block):
            rng = np.random.default_rng([7, start])
            lines_en, lines_de = [], []
            for i in range(start, min(pairs, start + block)):
                lines_en.append(noisy(en[i % len(en)], rng))
                lines_de.append(noisy(de[i % len(de)], rng))
            fen.write("\n".join(lines_en) + "\n")
            fde.write("\n".join(lines_de) + "\n")
    for name in ("val.en", "val.de", "test_2016_flickr.en", "test_2016_flickr.de"):
        shutil.copyfile(src / name, out / name)
    return out


def main(argv: list[str] | None = None) -> None:
    """Write the corpus named on the command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4_500_000)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/work/scale/synthetic")
    p.add_argument("--data_dir", default=None)
    args = p.parse_args(argv)
    print(make(args.pairs, args.out, args.data_dir))


if __name__ == "__main__":
    main()
