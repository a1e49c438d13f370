"""Model soup of CoNLL-2003 taggers: average fine-tuned checkpoints, score dev and test F1.

    python -m benchmarks.ner.soup benchmarks/work/ner_conll/minilm_context.ckpt \\
        benchmarks/work/teachers/ner_minilm_casing_teacher.ckpt --weights 0.5,0.5 0.7,0.3

Each input tagger and each weighted average (`core.averaging.average_checkpoints`, Wortsman et al.
2022) is scored on eng.testa (dev) and eng.testb (test): word-level seqeval F1 overall and per
type, each sentence tagged with its own document's context when the first checkpoint was trained
with context (a soup takes the first file's data spec). The soup to quote is the one with the best
dev F1 (`best_by_dev`); test F1 is reported for all, never used to choose. A softmax tagger is
also scored with IOB2-constrained Viterbi decoding (`dev_constrained`, `test_constrained`); a CRF
tagger always decodes that way. Given one checkpoint, it only scores that tagger. Writes
`benchmarks/results/ner/ner_soup.json` (or `--out`) after every model.

`--greedy` adds the greedy soup (Wortsman et al.'s Recipe 1, `core.averaging.greedy_soup`): the
taggers best-first by dev F1, each kept if the uniform soup with it has no lower dev F1. Dev F1
here and in `best_by_dev` is the decoding the tagger was trained to be quoted with (constrained
for a tagger saved with `constrained_decoding`, else argmax).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from core.averaging import average_checkpoints, greedy_soup
from core.data_dir import REPO_ROOT, resolve_data_dir
from core.training import git_commit
from ner.module import TaggerModule, score_conll

log = logging.getLogger(__name__)


def score(module: TaggerModule, conll: Path) -> dict:
    """Entity F1 (overall and per type) of `module` on a CoNLL file, documents kept apart."""
    with torch.no_grad():
        scores = score_conll(module, conll)
    return {"f1": scores["f1"], "per_type": {k[3:]: round(v, 4) for k, v in scores.items() if k.startswith("f1_")}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of this benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="TaggerModule checkpoints of the same model")
    p.add_argument("--weights", nargs="*", default=[], help="comma-separated weight sets (uniform is always run)")
    p.add_argument("--greedy", action="store_true", help="also the greedy soup chosen on dev F1")
    p.add_argument("--data_dir", default=None, help="folder with conll2003/ (default: ../shared/data)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/ner/ner_soup.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Average the tagger checkpoints (uniform and, with --greedy, the greedy soup) and score them."""
    args = parse_args(argv)
    conll = resolve_data_dir(args.data_dir, "conll2003")
    splits = {"dev": conll / "eng.testa", "test": conll / "eng.testb"}
    weight_sets = [[1.0] * len(args.checkpoints)] + [[float(w) for w in s.split(",")] for s in args.weights]
    if len(args.checkpoints) == 1:  # one tagger: just score it (with both decodings)
        weight_sets = []
    results: dict = {"git_commit": git_commit(), "command": " ".join(["python", "-m", "benchmarks.ner.soup",
                                                                        *sys.argv[1:]]), "rows": []}

    def add(name: str, module: TaggerModule, **extra) -> dict:
        quoted = "dev_constrained" if module.crf is None and module.hparams.get("constrained_decoding") else "dev"
        if module.crf is None:  # "dev"/"test" are argmax even for a tagger saved with constrained decoding on
            module.constrained_decoding = False
        row = {"name": name, **extra, **{k: score(module.eval(), path) for k, path in splits.items()}}
        if module.crf is None:
            module.constrained_decoding = True
            row.update({f"{k}_constrained": score(module, path) for k, path in splits.items()})
        row["dev_quoted"] = row[quoted]["f1"]
        results["rows"].append(row)
        soups = [r for r in results["rows"] if "weights" in r]
        if soups:
            results["best_by_dev"] = max(soups, key=lambda r: r["dev_quoted"])["name"]
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        constrained = (f"; constrained decoding: dev {row['dev_constrained']['f1']:.4f} "
                       f"test {row['test_constrained']['f1']:.4f}") if "dev_constrained" in row else ""
        log.info(f"[soup] {name}: dev {row['dev']['f1']:.4f} test {row['test']['f1']:.4f}{constrained}")
        return row

    ingredient_dev = [add(Path(path).name, TaggerModule.load_from_checkpoint(path, map_location="cpu",
                                                                             weights_only=False),
                          checkpoint=str(path))["dev_quoted"] for path in args.checkpoints]
    with tempfile.TemporaryDirectory() as tmp:
        def add_soup(paths: list[str], weights: list[float], prefix: str = "soup") -> dict:
            soup_path = Path(tmp) / "soup.ckpt"
            torch.save(average_checkpoints(paths, weights), soup_path)
            weights = [w / sum(weights) for w in weights]
            return add(f"{prefix} " + "/".join(f"{w:.2f}" for w in weights),
                       TaggerModule.load_from_checkpoint(soup_path, map_location="cpu", weights_only=False),
                       checkpoints=list(paths), weights=weights)

        for weights in weight_sets:
            add_soup(args.checkpoints, weights)
        if args.greedy and len(args.checkpoints) > 1:
            def held_out(paths: list[str]) -> float:
                return add_soup(list(paths), [1.0] * len(paths), prefix=f"greedy trial of {len(paths)}")["dev_quoted"]

            soup, trials = greedy_soup(args.checkpoints, held_out, ingredient_dev)
            results["greedy"] = {"kept": [str(p) for p in soup], "trials": trials}
            args.out.write_text(json.dumps(results, indent=2) + "\n")
            log.info(f"[soup] greedy soup keeps {len(soup)} of {len(args.checkpoints)}: {soup}")


if __name__ == "__main__":
    main()
