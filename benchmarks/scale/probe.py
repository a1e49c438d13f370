"""One data-path probe in a fresh process (run by `benchmarks.scale.run`): build the translation datamodule on a
corpus, time it to the first training batch, read `--batches` more, and print one JSON line with the times and
the peak resident memory.

    python -m benchmarks.scale.probe --dir CORPUS --cache CACHE --source text|datasets [--batches 200]
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: they are part of a start

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402


def smaps_rollup() -> dict[str, int]:
    """Rss / Pss / Private of this process in MiB (Linux)."""
    out = {}
    for line in open("/proc/self/smaps_rollup", encoding="ascii"):
        key, *rest = line.split()
        if key.rstrip(":") in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean"):
            out[key.rstrip(":")] = int(rest[0]) // 1024
    return out


def main() -> None:
    """Probe the data path named on the command line; print the JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--source", choices=("text", "datasets"), required=True)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--num_proc", type=int, default=None)
    args = p.parse_args()
    from nmt.data import TranslationDataModule

    dm = TranslationDataModule(dir=args.dir, subdir=".", source=args.source, cache_dir=args.cache,
                               vocab_size=8000, max_tokens=2500, num_proc=args.num_proc)
    dm.prepare_data()
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    next(batches)
    first = time.perf_counter() - START
    tokens = 0
    for _, batch in zip(range(args.batches), batches, strict=False):
        tokens += int((batch["tgt_out"] != 0).sum())
    read = time.perf_counter() - START - first
    print(json.dumps({"source": args.source, "pairs": len(dm.splits["train"]), "first_batch_s": first,
                      "read_s": read, "batches": args.batches, "target_tokens_read": tokens,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      **{f"{k.lower()}_mib": v for k, v in smaps_rollup().items()}}))


if __name__ == "__main__":
    main()
