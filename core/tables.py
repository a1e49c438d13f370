"""Tables through Hugging Face `datasets`, shared by the tasks' data modules: local Parquet / JSON(L) / Arrow files
or `save_to_disk` folders, and hub datasets for users online (never needed offline).

Every error names the file (or hub id) and what it lacks: a missing file, an unknown suffix, a DatasetDict where
one split was expected, absent columns, or no network for a hub id (and how to point at local files instead).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

TABLE_SUFFIXES = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def is_table(path: str | Path) -> bool:
    """True for a path the `datasets` readers take (a table file or a `save_to_disk` folder)."""
    path = Path(path)
    return path.suffix in TABLE_SUFFIXES or path.is_dir()


def file_digest(path: Path) -> str:
    """Content hash of a file, or of every file inside a folder (a `save_to_disk` dataset)."""
    digest = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def read_table(source: str | Path, cache_dir: Path):
    """A `datasets.Dataset` from a table file or a `save_to_disk` folder (memory-mapped Arrow)."""
    import datasets

    datasets.disable_progress_bars()
    source = Path(source).expanduser()
    if source.is_dir():
        table = datasets.load_from_disk(str(source))
        if isinstance(table, datasets.DatasetDict):
            raise ValueError(f"{source} holds a DatasetDict ({list(table)}); point each split at its own folder")
        return table
    if source.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{source}: expected a .parquet, .json, .jsonl or .arrow file or a save_to_disk folder")
    if not source.is_file():
        raise FileNotFoundError(f"data file not found: {source}")
    return datasets.load_dataset(TABLE_SUFFIXES[source.suffix], data_files=str(source), split="train",
                                 cache_dir=str(cache_dir))


def hub_table(name: str, config: str | None, split: str, cache_dir: Path, local_hint: str):
    """A split of a hub dataset (online users); offline, one error saying so and how to use local files
    (`local_hint`, e.g. "--data.files '{train: ..., ...}'")."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, config, split=split, cache_dir=str(cache_dir))
    except ConnectionError as err:  # what `datasets` raises offline (no network, or HF_HUB_OFFLINE=1)
        raise ConnectionError(
            f"cannot load hub dataset {name!r} ({config}): this machine looks offline ({type(err).__name__}: "
            f"{err}). Point at local Parquet/JSON/Arrow files or a save_to_disk folder instead ({local_hint})"
        ) from err


def require_columns(table, columns: list[str], where: str) -> None:
    """ValueError naming `where`, the expected columns and the ones found, unless `table` has all `columns`."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: expected columns {columns}, missing {missing}; found {table.column_names}")
