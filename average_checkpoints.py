"""Average several NMT or NER checkpoints of one model into one ("model soup", `core/averaging.py`).

    # uniform soup of the last three epochs of an NMT run (trained with --checkpoint.save_top_k -1):
    python average_checkpoints.py RUN/checkpoints/epoch=17*.ckpt RUN/checkpoints/epoch=18*.ckpt \\
        RUN/checkpoints/last.ckpt --output soup.ckpt

    # weighted average of two tagger fine-tunes (weights are normalised):
    python average_checkpoints.py a.ckpt b.ckpt --weights 0.7 0.3 --output soup.ckpt

The files must describe the same model (state-dict keys and shapes, compression spec,
vocabulary / tokenizer, architecture hyper-parameters incl. tagger labels). The output is the
first file's checkpoint with averaged weights, written atomically; it reloads alone with
`TranslationModule/TaggerModule.load_from_checkpoint(path, weights_only=False)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.averaging import average_checkpoints
from core.training import AtomicCheckpointIO


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="two or more TranslationModule or TaggerModule checkpoints")
    p.add_argument("--output", required=True, help="averaged checkpoint to write")
    p.add_argument("--weights", type=float, nargs="+", help="one positive weight per checkpoint (default: uniform)")
    return p


def main(argv: list[str] | None = None) -> Path:
    """Parse `argv`, average, write `--output`; bad input exits with one error line."""
    args = build_parser().parse_args(argv)
    try:
        ckpt = average_checkpoints(args.checkpoints, args.weights)
        AtomicCheckpointIO().save_checkpoint(ckpt, args.output)
    except (ValueError, FileNotFoundError) as err:
        if argv is not None:  # called from Python (tests): let the caller see the exception
            raise
        sys.exit(f"average_checkpoints.py: error: {err}")
    weights = ", ".join(f"{w:.3g}" for w in ckpt["averaged_from"]["weights"])
    print(f"averaged {len(args.checkpoints)} checkpoints (weights {weights}) -> {args.output}")
    return Path(args.output)


if __name__ == "__main__":
    main()
