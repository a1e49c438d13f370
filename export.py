"""Make a trained or compressed checkpoint deployable: an int8 / bf16 PyTorch checkpoint, or ONNX files.

    # int8 dynamic quantisation (linear layers; keep some in fp32 with --exclude), reloads from the file alone:
    python export.py --ckpt pruned.ckpt --output pruned.int8.ckpt --dtype int8 [--exclude '*.ffn.fc2' head]

    # ONNX for ONNX Runtime (+ an int8 copy, model.int8.onnx, with --int8); translation models also write
    # model.decoder.onnx, the decoder step with its key/value cache as inputs and outputs:
    python export.py --ckpt tagger.ckpt --output tagger.onnx --int8

    # run the exported model with the usual tools:
    python -m ner.predict tagger.onnx eng.testb tagged.conll
    python -m nmt.translate --ckpt nmt.onnx --input test.en --output hyp.de --reference test.de
    python -m sts.evaluate student.int8.onnx

The checkpoint's task (translation, tagger, sentence encoder) is the one it records; pruned, FFN-pruned,
factorised and distilled models export like any other (gates must be pruned or detached first).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from compression.quantize import DTYPES, quantize, serialized_bytes
from core.onnx import MIN_OPSET, export_onnx
from core.tasks import load_task_module
from core.training import save_module_checkpoint

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> list[Path]:
    """Parse the arguments, write the quantised checkpoint or the ONNX files; returns the files written."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by train.py / prune_heads.py / prune_distill.py")
    p.add_argument("--output", required=True, type=Path, help="*.ckpt: a quantised checkpoint; *.onnx: ONNX files")
    p.add_argument("--dtype", choices=DTYPES, help="for a .ckpt output: int8 (dynamic, linear layers) or bf16")
    p.add_argument("--exclude", nargs="*", default=[], help="linear-layer name patterns kept in fp32 under int8")
    p.add_argument("--task", default=None, help="the task of a checkpoint written before tasks were recorded (nmt)")
    p.add_argument("--int8", action="store_true", help="for an .onnx output: also write ONNX Runtime's int8 copy")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help="ONNX opset (default: %(default)s)")
    args = p.parse_args(argv)
    if args.output.suffix == ".onnx":
        written = export_onnx(args.ckpt, args.output, opset=args.opset, int8=args.int8, task=args.task)
    elif args.output.suffix == ".ckpt":
        if args.dtype is None:
            p.error("a .ckpt output is a quantised checkpoint: give --dtype int8 or --dtype bf16")
        _, module = load_task_module(args.ckpt, args.task)
        before = serialized_bytes(module)
        quantize(module, args.dtype, args.exclude)
        save_module_checkpoint(module, args.output)
        log.info("%s: %.1f MB of weights -> %.1f MB (%s)", args.output, before / 1e6, serialized_bytes(module) / 1e6,
                 args.dtype)
        written = [args.output]
    else:
        p.error(f"--output must end in .ckpt (quantised checkpoint) or .onnx (ONNX export), got {args.output}")
    for path in written:
        log.info("wrote %s", path)
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
