"""Shared fixtures: the real-data location and small slices of it for end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import lightning
import pytest
import torch
from tokenizers import BertWordPieceTokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data"))
IN_CI = bool(os.environ.get("CI"))

# Real-data tests may skip only on a machine without the data, never in CI.
requires_data = pytest.mark.skipif(not DATA.is_dir() and not IN_CI, reason=f"no data directory at {DATA}")


@pytest.fixture(scope="session")
def multi30k_slice(tmp_path_factory) -> Path:
    """A folder with the first 240 train / 24 val / 24 test pairs of Multi30k (real text)."""
    src = DATA / "multi30k"
    out = tmp_path_factory.mktemp("multi30k")
    for stem, n in (("train", 240), ("val", 24), ("test_2016_flickr", 24)):
        for lang in ("en", "de"):
            lines = (src / f"{stem}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            (out / f"{stem}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def tiny_nmt_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """train.py arguments for the tiny translation config on `data_dir`, logging to `run_dir`."""
    return [
        "--config", str(REPO / "tests/fixtures/nmt_tiny.yaml"), "--data.dir", str(data_dir),
        "--data.cache_dir", str(run_dir / "spm"), "--trainer.logger.init_args.save_dir", str(run_dir),
        *extra,
    ]


def pytest_configure(config) -> None:
    # Tiny models: one thread is faster than two fighting over two cores (and leaves a core
    # for whatever else runs on the machine).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny WordPiece tokenizer.json for tiny BERT taggers."""
    tok = BertWordPieceTokenizer(lowercase=False)
    tok.train_from_iterator(["EU rejects German call to boycott British lamb ."] * 3, vocab_size=120,
                            show_progress=False)
    path = tmp_path_factory.mktemp("vocab") / "tokenizer.json"
    tok.save(str(path))
    return path


def save_like_lightning(module: lightning.LightningModule, path: Path) -> dict:
    """What Trainer.save_checkpoint writes for the model part: state dict, hparams, module hook."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return ckpt


# --- tiny tagger shared by the compression and KD tests ----------------------------------------

TINY_BERT = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)
TINY_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def tiny_tagger(tokenizer_file, config: dict = TINY_BERT, labels: list[str] = TINY_LABELS, seed: int = 0,
                vocab_from_tokenizer: bool = False, **kw):
    """A seeded tiny TaggerModule (no dropout); optionally sized to the tokenizer's vocabulary."""
    from tokenizers import Tokenizer

    from ner.module import TaggerModule

    torch.manual_seed(seed)
    if vocab_from_tokenizer:
        config = {**config, "vocab_size": Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()}
    return TaggerModule(bert_config=config, dropout=0.0, data_spec={"labels": labels, "tokenizer": str(tokenizer_file)},
                        **kw)


def tiny_ner_batch(max_id: int = 100, ignore_first: bool = False) -> dict:
    """Two padded sentences of 7 random sub-tokens with labels (-100 on padding, and on the very
    first token with `ignore_first`)."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, max_id, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = torch.randint(0, len(TINY_LABELS), (2, 7), generator=g)
    labels[1, 5:] = -100
    if ignore_first:
        labels[0, 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "casing": torch.zeros_like(ids), "labels": labels}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 as if set before the start (the libraries read it once, at import): no network retries."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
