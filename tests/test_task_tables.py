"""NER and STS data through `datasets` tables: the same batches / pairs as the CoNLL and CSV files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import DATA, requires_data

from ner.conll import read_conll, to_iob2
from ner.data import CoNLLDataModule
from sts.data import read_sts

pytestmark = requires_data  # real CoNLL-2003 and STS-B slices
HUB_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]  # the hub's order


def conll_slice(folder: Path, sentences: int = 40) -> tuple[Path, dict[str, list]]:
    """The first `sentences` of each real CoNLL split as 2-column IOB2 files, and the same as hub-layout rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for split, name in (("train", "eng.train"), ("dev", "eng.testa"), ("test", "eng.testb")):
        converted, _ = to_iob2(read_conll(DATA / "conll2003" / name))
        kept = converted[:sentences]
        lines = ["\n".join(f"{w} {t}" for w, t in zip(s.tokens, s.tags, strict=True)) for s in kept]
        (folder / name).write_text("\n\n".join(lines) + "\n", encoding="utf-8")
        rows[split] = [{"tokens": s.tokens, "tags": s.tags} for s in kept]
    return folder, rows


def hub_layout(rows: list[dict]):
    """A `datasets.Dataset` shaped like the hub's conll2003: ClassLabel `ner_tags`."""
    import datasets

    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=HUB_NAMES))})
    return datasets.Dataset.from_dict({"tokens": [r["tokens"] for r in rows],
                                       "ner_tags": [[HUB_NAMES.index(t) for t in r["tags"]] for r in rows]},
                                      features=features)


def all_batches(dm: CoNLLDataModule) -> list[dict]:
    dm.setup("fit")
    return [b for loader in (dm.train_dataloader, dm.val_dataloader, dm.test_dataloader) for b in loader()]


def test_ner_tables_give_the_conll_files_batches(tmp_path: Path) -> None:
    folder, rows = conll_slice(tmp_path / "conll")
    files = {"train": str(tmp_path / "train.parquet"), "dev": str(tmp_path / "dev_disk"),
             "test": str(tmp_path / "test.jsonl")}
    hub_layout(rows["train"]).to_parquet(files["train"])  # ClassLabel names kept in the Parquet metadata
    hub_layout(rows["dev"]).save_to_disk(files["dev"])
    pa_rows = [{"tokens": r["tokens"], "ner_tags": r["tags"]} for r in rows["test"]]  # tag strings
    import datasets

    datasets.Dataset.from_list(pa_rows).to_json(files["test"])
    from_files = CoNLLDataModule(dir=str(folder), batch_size=8, cache_dir=str(tmp_path / "hf"))
    from_tables = CoNLLDataModule(files=files, batch_size=8, cache_dir=str(tmp_path / "hf"))
    assert from_tables.spec().labels == from_files.spec().labels
    a, b = all_batches(from_files), all_batches(from_tables)
    assert len(a) == len(b) > 3
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert [p.name for p in from_tables.data_files()] == ["train.parquet", "dev_disk", "test.jsonl"]


def test_ner_table_errors_name_the_table_and_what_it_lacks(tmp_path: Path, offline) -> None:
    _, rows = conll_slice(tmp_path / "conll", sentences=5)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"words": [["EU"]], "labels": [["B-ORG"]]}), wrong)
    files = {"train": str(wrong), "dev": str(wrong), "test": str(wrong)}
    with pytest.raises(ValueError, match=r"wrong.parquet: expected columns \['tokens', 'ner_tags'\].*found \['words'"):
        CoNLLDataModule(files=files, cache_dir=str(tmp_path / "hf")).spec()
    ids = tmp_path / "ids.parquet"  # integer tags without ClassLabel names
    pq.write_table(pa.table({"tokens": [r["tokens"] for r in rows["train"]],
                             "ner_tags": [[HUB_NAMES.index(t) for t in r["tags"]] for r in rows["train"]]}), ids)
    files = {"train": str(ids), "dev": str(ids), "test": str(ids)}
    with pytest.raises(ValueError, match=r"ids.parquet\[0\]: tags .* need tag names"):
        CoNLLDataModule(files=files, cache_dir=str(tmp_path / "hf")).spec()
    named = CoNLLDataModule(files=files, tag_names=HUB_NAMES, cache_dir=str(tmp_path / "hf"))
    assert named.sentences == {} and named.spec().labels[0] == "O"
    assert named.sentences["train"][0].tags == rows["train"][0]["tags"]
    with pytest.raises(ValueError, match="must name exactly the splits"):
        CoNLLDataModule(files={"train": str(ids)})
    with pytest.raises(ConnectionError, match=r"'conll2003'.*looks offline.*data.files"):
        CoNLLDataModule(hub="conll2003", cache_dir=str(tmp_path / "hf")).spec()


def test_sts_tables_give_the_csv_pairs_and_errors_name_the_row(tmp_path: Path, offline) -> None:
    csv_pairs = read_sts(DATA / "stsb/stsb-en-dev.csv")[:50]
    columns = {"sentence1": [p.sentence1 for p in csv_pairs], "sentence2": [p.sentence2 for p in csv_pairs],
               "score": [p.score for p in csv_pairs]}
    pq.write_table(pa.table(columns), tmp_path / "dev.parquet")
    assert read_sts(tmp_path / "dev.parquet", tmp_path / "hf") == csv_pairs
    pq.write_table(pa.table({**columns, "score": [9.0] + columns["score"][1:]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad.parquet\[0\]: score 9.0 is outside"):
        read_sts(tmp_path / "bad.parquet", tmp_path / "hf")
    pq.write_table(pa.table({"text_a": ["a"], "text_b": ["b"], "label": [1.0]}), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"expected columns \['sentence1', 'sentence2', 'score'\]"):
        read_sts(tmp_path / "cols.parquet", tmp_path / "hf")
    with pytest.raises(ConnectionError, match="looks offline"):
        read_sts("hub:mteb/stsbenchmark-sts:test", tmp_path / "hf")
    with pytest.raises(ValueError, match="expected hub:<name>"):
        read_sts("hub:mteb/stsbenchmark-sts", tmp_path / "hf")
