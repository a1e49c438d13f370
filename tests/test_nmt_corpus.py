"""The `datasets` path of the translation data: same batches as the text path, Arrow cache, sources, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import requires_data, tiny_nmt_args

from core.cli import main as train_main
from nmt.data import TranslationDataModule

pytestmark = requires_data  # a real Multi30k slice


def datamodule(data_dir: Path, cache: Path, **kwargs) -> TranslationDataModule:
    """A small-vocabulary datamodule on `data_dir`, set up, caching under `cache`."""
    kwargs = {"vocab_size": 300, "max_tokens": 600, "eval_max_tokens": 900, **kwargs}
    dm = TranslationDataModule(dir=str(data_dir), cache_dir=str(cache), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def batches(dm: TranslationDataModule, split: str) -> list[dict]:
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return list(loader)


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 1
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_datasets_path_gives_the_text_paths_batches(multi30k_slice: Path, tmp_path: Path) -> None:
    text = datamodule(multi30k_slice, tmp_path / "c1", max_len=30)
    arrow = datamodule(multi30k_slice, tmp_path / "c2", max_len=30, source="datasets")
    assert arrow.vocab.to_state() == text.vocab.to_state()
    assert len(arrow.splits["train"]) == len(text.splits["train"]) < 240  # the max_len filter dropped some
    for split in ("train", "val", "test"):
        assert_same_batches(batches(text, split), batches(arrow, split))


def test_parquet_and_save_to_disk_sources_with_a_translation_column(multi30k_slice: Path, tmp_path: Path) -> None:
    import datasets

    files = {}
    for split, stem in (("train", "train"), ("val", "val"), ("test", "test_2016_flickr")):
        en = (multi30k_slice / f"{stem}.en").read_text(encoding="utf-8").splitlines()
        de = (multi30k_slice / f"{stem}.de").read_text(encoding="utf-8").splitlines()
        rows = [{"de": d, "en": e} for e, d in zip(en, de, strict=True)]
        if split == "val":  # the hub's WMT layout, saved by datasets
            files[split] = str(tmp_path / "val_disk")
            datasets.Dataset.from_dict({"translation": rows}).save_to_disk(files[split])
        else:
            files[split] = str(tmp_path / f"{split}.parquet")
            pq.write_table(pa.table({"en": en, "de": de, "id": list(range(len(en)))}), files[split])
    text = datamodule(multi30k_slice, tmp_path / "c1")
    table = datamodule(multi30k_slice, tmp_path / "c2", files=files)
    for split in ("train", "val", "test"):
        assert_same_batches(batches(text, split), batches(table, split))


def test_arrow_cache_is_reused_and_rebuilt_for_another_tokenizer(multi30k_slice: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    from nmt import corpus

    first = datamodule(multi30k_slice, tmp_path / "c", source="datasets")
    cache_files = sorted((tmp_path / "c" / "arrow").glob("*.arrow"))
    assert [p.name.split("-")[0] for p in cache_files] == ["test", "train", "val"]
    stamps = {p: p.stat().st_mtime_ns for p in cache_files}
    with monkeypatch.context() as m:  # a second start reads no training sentences back: the vocabulary is cached
        m.setattr(corpus, "training_text", lambda *a: pytest.fail("training text read on a cached start"))
        m.setattr(corpus, "load_table", lambda *a: pytest.fail("raw table loaded on a cached start"))
        again = datamodule(multi30k_slice, tmp_path / "c", source="datasets")
    assert again.vocab.to_state() == first.vocab.to_state()
    assert {p: p.stat().st_mtime_ns for p in cache_files} == stamps  # memory-mapped, not rewritten
    assert again.splits["train"].table.cache_files[0]["filename"] in map(str, cache_files)
    assert_same_batches(batches(first, "train"), batches(again, "train"))
    other = datamodule(multi30k_slice, tmp_path / "c", source="datasets", vocab_size=250)
    assert len(list((tmp_path / "c" / "arrow").glob("*.arrow"))) == 6  # another tokenizer: new tables
    assert other.splits["train"].table.cache_files[0]["filename"] not in map(str, cache_files)


def test_table_without_the_language_columns_names_them(multi30k_slice: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"source": ["a"], "target": ["b"]}), bad)
    files = {"train": str(bad), "val": str(bad), "test": str(bad)}
    with pytest.raises(ValueError, match=r"bad.parquet: expected columns 'en' and 'de'.*found \['source', 'target'\]"):
        datamodule(multi30k_slice, tmp_path / "c", files=files)
    with pytest.raises(ValueError, match="must name exactly the splits"):
        datamodule(multi30k_slice, tmp_path / "c", files={"train": str(bad)})


def test_unaligned_text_files_name_both_counts(multi30k_slice: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for path in multi30k_slice.iterdir():
        lines = path.read_text(encoding="utf-8").splitlines()
        (folder / path.name).write_text("\n".join(lines[:-1] if path.name == "val.de" else lines) + "\n")
    with pytest.raises(ValueError, match=r"val.en has 24 lines, .*val.de has 23"):
        datamodule(folder, tmp_path / "c", source="datasets")


def test_hub_dataset_offline_says_so_and_how_to_use_local_files(tmp_path: Path, offline) -> None:
    with pytest.raises(ConnectionError, match="looks offline.*data.files"):
        TranslationDataModule(hub="wmt14", hub_config="de-en", cache_dir=str(tmp_path))


@pytest.mark.slow
def test_resume_is_exact_on_the_datasets_path(multi30k_slice: Path, tmp_path: Path) -> None:
    common = ["--data.source", "datasets", "--test", "false", "--trainer.limit_val_batches", "0",
              "--data.max_tokens", "800", "--trainer.max_epochs", "2"]
    straight = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "a", *common))
    first = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "b", *common, "--trainer.max_steps", "9",
                                     "--checkpoint.every_n_train_steps", "1"))
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resumed = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "b", *common, "--ckpt_path", str(last)))
    assert resumed.trainer.global_step == straight.trainer.global_step == 2 * straight.trainer.num_training_batches
    a, b = straight.model.model.state_dict(), resumed.model.model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert os.listdir(tmp_path / "a" / "spm" / "arrow")  # it did go through the Arrow tables


def test_sharded_cache_of_two_workers_is_reused_whole(multi30k_slice: Path, tmp_path: Path, monkeypatch) -> None:
    from nmt import corpus

    first = datamodule(multi30k_slice, tmp_path / "c", source="datasets", num_proc=2)
    assert len(first.splits["train"].table.cache_files) == 2  # one shard per worker, listed in the manifest
    monkeypatch.setattr(corpus, "load_table", lambda *a: pytest.fail("raw table loaded on a cached start"))
    again = datamodule(multi30k_slice, tmp_path / "c", source="datasets", num_proc=2)
    assert_same_batches(batches(first, "train"), batches(again, "train"))


def test_training_text_streams_clean_pairs_every_kth_row_or_the_first_limit() -> None:
    import datasets

    from nmt.corpus import training_text

    src = [f" s{i} " if i % 4 else " " for i in range(30)]  # every 4th pair has a blank source: dropped
    table = datasets.Dataset.from_dict({"src": src, "tgt": [f"t{i}" for i in range(30)]})
    sampled_src, sampled_tgt = training_text(table, None, 10)  # 30 rows > 10: every 3rd row
    assert list(sampled_src) == [f"s{i}" for i in range(0, 30, 3) if i % 4]
    assert list(sampled_tgt) == [f"t{i}" for i in range(0, 30, 3) if i % 4]
    assert list(sampled_src) == list(sampled_src)  # re-iterable: hashed for the cache key, then trained on
    first_src, first_tgt = training_text(table, 5, 10)
    assert list(first_src) == ["s1", "s2", "s3", "s5", "s6"] and list(first_tgt) == ["t1", "t2", "t3", "t5", "t6"]
