"""Where experiments find their data: explicit dir, then $DATA_DIR, then ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_data_dir(explicit: str | Path | None, subdir: str) -> Path:
    """The folder holding `subdir` (e.g. 'multi30k'), looked up in this order:
    `explicit` (``--data.dir``; a path to `subdir` itself or to its parent), ``$DATA_DIR``,
    then ``../shared/data`` beside the repository. Raises FileNotFoundError listing every
    place it looked.
    """
    if explicit:
        candidates = [Path(explicit) / subdir, Path(explicit)]
    elif os.environ.get("DATA_DIR"):
        candidates = [Path(os.environ["DATA_DIR"]) / subdir]
    else:
        candidates = [REPO_ROOT.parent / "shared" / "data" / subdir]
    for path in candidates:
        if path.is_dir() and any(path.iterdir()):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"data directory for {subdir!r} not found (or empty); looked in: {looked}. "
        "Pass --data.dir, set $DATA_DIR, or put the data in ../shared/data."
    )
