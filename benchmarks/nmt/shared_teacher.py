"""Behaviour check of the translation path: the shared `make train` checkpoint still decodes test2016 to the
same hypotheses, with the same sacreBLEU, through today's code.

    python -m benchmarks.nmt.shared_teacher [--ckpt ../shared/checkpoints/nmt_small_swa.ckpt]

Writes `benchmarks/results/nmt/shared_teacher.json`: BLEU / chrF with signatures, decoding speed, the
SHA-256 of the checkpoint and of the hypotheses (one a line), and whether they equal the hypotheses of
the result file it replaces (`same_hypotheses_as_previous`) or, with `--reference_hypotheses`, how many
sentences differ from a file an earlier commit wrote, so a refactor that changes a single translation shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import torch

from core.data_dir import resolve_data_dir
from core.training import file_sha256, git_commit
from nmt.translate import evaluate_file, load_translator

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


def _compare(hyps: list[str], reference: Path | None) -> dict:
    """How the hypotheses compare with those of an earlier commit's file ({} without one)."""
    if reference is None:
        return {}
    earlier = reference.read_text(encoding="utf-8").splitlines()
    differ = sum(a != b for a, b in zip(hyps, earlier, strict=False)) + abs(len(hyps) - len(earlier))
    return {"reference_hypotheses": str(reference), "reference_hypotheses_sha256": file_sha256(reference),
            "sentences_differing_from_reference": differ}


def main(argv: list[str] | None = None) -> dict:
    """Translate test2016 with the checkpoint, compare with the stored result, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=REPO.parent / "shared/checkpoints/nmt_small_swa.ckpt")
    p.add_argument("--data_dir", default=None, help="folder holding multi30k/ (default: $DATA_DIR or ../shared/data)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--reference_hypotheses", type=Path,
                   help="hypotheses written by an earlier commit (`python -m nmt.translate ... --output`) to compare")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/nmt/shared_teacher.json")
    args = p.parse_args(argv)
    data = resolve_data_dir(args.data_dir, "multi30k")
    module = load_translator(args.ckpt)
    with torch.inference_mode():
        result = evaluate_file(module, data / "test_2016_flickr.en", data / "test_2016_flickr.de", args.beam)
    hyps = result.pop("hypotheses")
    digest = hashlib.sha256(("\n".join(hyps) + "\n").encode()).hexdigest()
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out = {"checkpoint": str(args.ckpt), "checkpoint_sha256": file_sha256(args.ckpt), "split": "test2016",
           **result, "hypotheses_sha256": digest, "sentences": len(hyps),
           "same_hypotheses_as_previous": previous.get("hypotheses_sha256") == digest if previous else None,
           "previous_git_commit": previous.get("git_commit"), "git_commit": git_commit(),
           **_compare(hyps, args.reference_hypotheses),
           "threads": torch.get_num_threads(), "command": "python -m benchmarks.nmt.shared_teacher"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    log.info("BLEU %.2f chrF %.2f, hypotheses %s (same as previous: %s) -> %s", out["bleu"], out["chrf"],
             digest[:12], out["same_hypotheses_as_previous"], args.out)
    return out


if __name__ == "__main__":
    main()
