"""End-to-end training on a real Multi30k slice: resume, atomic saves, DDP, records, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import DATA, REPO, requires_data, tiny_nmt_args
from lightning.pytorch.demos.boring_classes import BoringModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.cli import main as train_main
from core.training import LastBatchSafeCheckpoint, epochs_done
from nmt.module import corpus_scores
from nmt.translate import load_translator, translate_lines

pytestmark = [pytest.mark.slow, requires_data]  # every test here trains through train.py on real data


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("interruption", [
    ["--trainer.max_steps", "9", "--checkpoint.every_n_train_steps", "1"],   # mid-epoch, after an SWA snapshot
    ["--trainer.max_steps", "12", "--checkpoint.every_n_train_steps", "1"],  # on the last batch of an epoch
    ["--trainer.max_epochs", "2"],                                           # the usual end-of-epoch checkpoint
], ids=["mid-epoch", "last-batch", "epoch-end"])
def test_resume_equals_uninterrupted_run(multi30k_slice, tmp_path, interruption):
    # Accumulation 2 and SWA from the first epoch: the optimizer, the accumulation position,
    # the SWA average, the RNG (dropout) and the batch order must all survive the restart.
    common = ["--trainer.accumulate_grad_batches", "2", "--test", "false", "--trainer.limit_val_batches", "0",
              "--trainer.callbacks+=core.swa.SWA", "--trainer.callbacks.start_epoch=0", "--data.max_tokens", "800",
              "--trainer.max_epochs", "3"]
    straight = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "a", *common))
    assert straight.trainer.num_training_batches == 12, "the cases above assume 6 steps an epoch"

    first = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "b", *common, *interruption))
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    resumed = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "b", *common, "--ckpt_path", str(last)))
    assert (resumed.trainer.global_step, resumed.trainer.current_epoch) == (18, 3)
    a, b = straight.model.model.state_dict(), resumed.model.model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("val", [{"limit_val_batches": 1}, {"limit_val_batches": 0},
                                 {"limit_val_batches": 1, "val_check_interval": 2}])
def test_every_epoch_leaves_last_checkpoint_with_save_top_k_0(tmp_path, val):
    # train.py's default (save_last, save_top_k 0): a run killed after any epoch must be resumable,
    # with or without validation, and when saves follow a mid-epoch validation.
    seen = []

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = tmp_path / "last.ckpt"
            seen.append(epochs_done(last) if last.exists() else None)

    checkpoint = LastBatchSafeCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=4, callbacks=[checkpoint, Probe()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, **val)
    trainer.fit(BoringModel())
    assert seen == [None, 1, 2]  # epochs_done tells a finished run from one to resume
    assert epochs_done(tmp_path / "last.ckpt") == 3
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 12


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {str(REPO)!r})
        from core.training import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"version": 1, "w": torch.arange(5)}}, {str(path)!r})
        def slow_save(obj, f, *args, **kwargs):
            f.write(b"half-written" * 10000)
            f.flush()
            print("writing", flush=True)
            time.sleep(120)
        torch.save = slow_save
        io.save_checkpoint({{"version": 2}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert (tmp_path / "last.ckpt.tmp").stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(path, weights_only=True)
    assert state["version"] == 1 and torch.equal(state["w"], torch.arange(5))


def test_run_folder_records_config_commit_and_data(multi30k_slice, tmp_path):
    cli = train_main(tiny_nmt_args(multi30k_slice, tmp_path, "--trainer.max_steps", "2",
                                   "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"))
    run = Path(cli.trainer.log_dir)
    record = json.loads((run / "run_record.json").read_text())
    assert record["git_commit"] != "unknown"
    assert {Path(f["path"]).name for f in record["data_files"]} >= {"train.en", "train.de", "val.de"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in record["data_files"])
    assert "d_model: 32" in (run / "config.yaml").read_text()
    events = EventAccumulator(str(run))
    events.Reload()
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the hparams view
    assert {"train/loss", "test/bleu", "test/loss", "hp_metric"} <= set(events.Tags()["scalars"])
    assert "test/samples/text_summary" in events.Tags()["tensors"]


def test_checkpoint_alone_translates_identically(multi30k_slice, tmp_path):
    cli = train_main(tiny_nmt_args(multi30k_slice, tmp_path, "--trainer.max_steps", "6", "--test", "false",
                                   "--trainer.limit_val_batches", "0"))
    lines = (multi30k_slice / "val.en").read_text().splitlines()[:6]
    module = cli.model.eval()
    before = translate_lines(module, lines, beam_size=2)
    reloaded = load_translator(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    assert translate_lines(reloaded, lines, beam_size=2) == before


def test_checkpoint_from_another_architecture_is_refused(multi30k_slice, tmp_path):
    cli = train_main(tiny_nmt_args(multi30k_slice, tmp_path / "a", "--trainer.max_steps", "1", "--test", "false",
                                   "--trainer.limit_val_batches", "0"))
    ckpt = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    with pytest.raises(ValueError, match="d_model"):
        train_main(tiny_nmt_args(multi30k_slice, tmp_path / "b", "--model.init_args.arch.d_model", "64",
                                 "--trainer.max_steps", "2", "--ckpt_path", str(ckpt)))


def test_unknown_config_key_names_the_key(multi30k_slice, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(tiny_nmt_args(multi30k_slice, tmp_path, "--model.init_args.arch.d_modle", "64"))
    assert "d_modle" in capsys.readouterr().err


def test_missing_data_dir_says_where_it_looked(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match=str(tmp_path / "nowhere")):
        train_main(tiny_nmt_args(tmp_path / "nowhere", tmp_path))


def test_ddp_two_cpu_processes(multi30k_slice, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = tiny_nmt_args(multi30k_slice, tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                         "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--test", "false")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr + proc.stdout or "MEMBER: 2/2" in proc.stderr + proc.stdout
    assert list(tmp_path.rglob("last.ckpt"))


def test_tiny_model_overfits_64_pairs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("en", "de"):
        lines = (DATA / "multi30k" / f"train.{lang}").read_text(encoding="utf-8").splitlines()[:64]
        for stem in ("train", "val", "test_2016_flickr"):
            (data / f"{stem}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli = train_main(tiny_nmt_args(
        data, tmp_path, "--model.init_args.arch", '{"d_model": 64, "num_heads": 4, "d_ff": 256, '
        '"encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0}', "--model.init_args.label_smoothing", "0",
        "--trainer.callbacks", '[{"class_path": "core.schedules.TriangleSchedule", '
        '"init_args": {"peak_lr": 0.003, "warmup": 30}}]',
        "--data.max_tokens", "1000", "--trainer.max_epochs", "100", "--trainer.limit_val_batches", "0",
        "--test", "false"))
    module = cli.model.eval()
    src = (data / "train.en").read_text(encoding="utf-8").splitlines()
    refs = (data / "train.de").read_text(encoding="utf-8").splitlines()
    bleu = corpus_scores(translate_lines(module, src, beam_size=1), refs)["bleu"]
    assert bleu > 90, bleu
