"""Sharded evaluation under DDP: 2 CPU processes (gloo) log exactly what 1 process logs for the same checkpoint
and split — val loss, BLEU and chrF (nmt), entity F1 (ner), Spearman (sts) — and the sentence counts show that
each sentence was evaluated once (each rank decoded its share). One launch goes through `torchrun` (environment
variables, as on a cluster), the others through Lightning's own launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import BertWordPieceTokenizer

from core.cli import main as train_main
from core.training import save_module_checkpoint
from ner.conll import read_conll, to_iob2
from sts.module import SentenceEncoderModule
from tests.conftest import DATA, REPO, requires_data, tiny_nmt_args

pytestmark = [pytest.mark.slow, requires_data]
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=128)


def _bert_run_config(tmp_path: Path, model: dict, data: dict) -> list[str]:
    trainer = {"accelerator": "cpu", "devices": 1, "max_steps": 2, "enable_progress_bar": False,
               "num_sanity_val_steps": 0, "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                     "init_args": {"save_dir": str(tmp_path / "fit")}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"seed_everything": 1, "trainer": trainer, "model": model, "data": data}))
    return ["--config", str(path)]


def nmt_args(tmp_path: Path, multi30k_slice: Path) -> list[str]:
    """Tiny translation model; 24 val pairs in several token-budget batches."""
    return tiny_nmt_args(multi30k_slice, tmp_path / "fit", "--data.eval_max_tokens", "120",
                         "--trainer.max_steps", "2")


def ner_args(tmp_path: Path, _slice: Path) -> list[str]:
    """Tiny tagger on 40 real CoNLL sentences (train = dev), batches of 4."""
    blocks = [b for b in (DATA / "conll2003/eng.train").read_text().split("\n\n")
              if b.strip() and not b.startswith("-DOCSTART-")][:40]
    root = tmp_path / "conll"
    (root / "conll2003").mkdir(parents=True)
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (root / "conll2003" / name).write_text("\n\n".join(blocks) + "\n")
    tokenizer = BertWordPieceTokenizer(lowercase=False)
    tokenizer.train_from_iterator([" ".join(s.tokens) for s in to_iob2(read_conll(root / "conll2003/eng.train"))[0]],
                                  vocab_size=400, show_progress=False)
    tokenizer.save(str(root / "tokenizer.json"))
    return _bert_run_config(
        tmp_path, {"class_path": "ner.module.TaggerModule",
                   "init_args": {"bert_config": {**TINY_BERT, "vocab_size": tokenizer.get_vocab_size()},
                                 "casing": True}},
        {"class_path": "ner.data.CoNLLDataModule",
         "init_args": {"dir": str(root), "tokenizer": str(root / "tokenizer.json"), "batch_size": 4}})


def sts_args(tmp_path: Path, _slice: Path) -> list[str]:
    """Tiny sentence encoder (the packaged MiniLM tokenizer) on the first 60 real STS-B en dev pairs, batches of 8."""
    from core.hf_import import default_checkpoint_dir

    csv = tmp_path / "sts-en.csv"
    lines = (DATA / "stsb/stsb-en-dev.csv").read_text(encoding="utf-8").splitlines()[:60]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = str(default_checkpoint_dir())
    return _bert_run_config(
        tmp_path, {"class_path": "sts.module.SentenceEncoderModule",
                   "init_args": {"bert_config": {**TINY_BERT, "vocab_size": 30522}}},
        {"class_path": "sts.data.SentenceDataModule",
         "init_args": {"sts_files": {"en": str(csv)}, "tokenizer": tokenizer, "eval_batch_size": 8,
                       "max_length": 64}})


def _checkpoint(task: str, args: list[str], tmp_path: Path) -> Path:
    """A checkpoint to evaluate: 2 training steps (nmt, ner); the untrained encoder saved as is (sts: it trains
    only by distillation, and evaluating needs no training)."""
    if task != "sts":
        fit = train_main([*args, "--test", "false", "--trainer.limit_val_batches", "0"])
        return Path(fit.trainer.log_dir) / "checkpoints/last.ckpt"
    config = yaml.safe_load(Path(args[1]).read_text())
    torch.manual_seed(0)
    data = config["data"]["init_args"]
    module = SentenceEncoderModule(bert_config=config["model"]["init_args"]["bert_config"],
                                   data_spec={"tokenizer": data["tokenizer"], "max_length": data["max_length"],
                                              "languages": ["en"]})
    path = tmp_path / "sts.ckpt"
    save_module_checkpoint(module, path)
    return path


def _evaluate(args: list[str], ckpt: Path, out: Path, launcher: str | None) -> dict:
    """`train.py --fit false` on the checkpoint: in this process, or 2 processes by Lightning or torchrun."""
    run = [*args, "--fit", "false", "--test", "false", "--ckpt_path", str(ckpt),
           "--trainer.logger.init_args.save_dir", str(out)]
    if launcher is None:
        train_main(run)
    else:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
               if launcher == "torchrun" else [sys.executable])
        proc = subprocess.run([*cmd, str(REPO / "train.py"), *run, *ddp], cwd=out.parent, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    (metrics,) = out.rglob("metrics.json")
    return json.loads(metrics.read_text())["validate"]


@pytest.mark.parametrize(("task", "make_args", "counted", "launcher"), [
    ("nmt", nmt_args, "val/sentences", "torchrun"),
    ("ner", ner_args, "val/sentences", "lightning"),
    ("sts", sts_args, "val/pairs_en", "lightning"),
])
def test_two_processes_log_the_one_process_metrics(task, make_args, counted, launcher, tmp_path, multi30k_slice,
                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = make_args(tmp_path, multi30k_slice)
    ckpt = _checkpoint(task, args, tmp_path)
    one = _evaluate(args, ckpt, tmp_path / "one", None)
    two = _evaluate(args, ckpt, tmp_path / "two", launcher)
    expected = {"nmt": 24, "ner": 40, "sts": 60}[task]
    assert one[counted] == two[counted] == expected  # every sentence once, not once per rank
    assert set(one) == set(two)
    assert one.pop("seconds") > 0 and two.pop("seconds") > 0  # wall time of the validation loop
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key  # losses: float sums in another order
    scores = [k for k in one if k.startswith(("val/bleu", "val/chrf", "val/f1", "val/spearman"))]
    assert scores and all(two[k] == one[k] for k in scores)  # corpus scores: from exact integer / gathered rows
