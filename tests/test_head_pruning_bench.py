"""Gate learning rate, from-scratch inits with a pruned head layout, and the head-pruning benchmark helpers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import save_like_lightning
from PIL import Image

from benchmarks.head_pruning import report as head_pruning_report
from benchmarks.head_pruning import run as head_pruning
from compression.gates import attached_gates
from compression.heads import attention_modules
from compression.prune import apply_head_config, head_config, prune_model
from compression.scratch import scratch_init, write_scratch_init
from core.schedules import TriangleSchedule
from core.tasks import load_task_module
from ner.module import TaggerModule
from nmt.module import TranslationModule

ARCH = dict(d_model=16, num_heads=4, d_ff=24, encoder_layers=2, decoder_layers=2, dropout=0.0, max_len=32)
DATA_SPEC = {"vocab_size": 50, "pad_id": 0, "bos_id": 2, "eos_id": 3}
BERT = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=64)
PLAN = {"encoder_self": [[0, 2], []], "decoder_self": [[1], [0, 1, 3]], "decoder_cross": [[3], [0, 1, 2, 3]]}


def nmt_module(seed: int = 0, **kw) -> TranslationModule:
    torch.manual_seed(seed)
    return TranslationModule(arch=ARCH, data_spec=DATA_SPEC, **kw)


def gate_ids(module) -> set[int]:
    return {id(g.log_alpha) for layers in attached_gates(module.compressible_network()).values() for g in layers}


def schedule_step(module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """What TriangleSchedule does before optimizer step `step` of 100."""
    trainer = SimpleNamespace(optimizers=[optimizer], global_step=step, estimated_stepping_batches=100)
    TriangleSchedule(peak_lr=1e-4, warmup=10).on_train_batch_start(trainer, module, None, 0)


@pytest.mark.parametrize("task", ["nmt", "ner"])
def test_gate_lr_is_its_own_constant_group_untouched_by_schedules(task, tokenizer_file) -> None:
    if task == "nmt":
        module = nmt_module(gates={"types": ["encoder_self", "decoder_cross"], "l0_lambda": 0.1, "lr": 0.05},
                            optimizer={"name": "adam", "weight_decay": 0.01})
    else:
        module = TaggerModule(bert_config=BERT, gates={"types": ["bert_self"], "l0_lambda": 0.1, "lr": 0.05},
                              data_spec={"labels": ["O", "B-PER", "I-PER"], "tokenizer": str(tokenizer_file)})
    optimizer = module.configure_optimizers()
    groups = optimizer.param_groups
    gate_groups = [g for g in groups if {id(p) for p in g["params"]} & gate_ids(module)]
    assert len(gate_groups) == 1 and {id(p) for p in gate_groups[0]["params"]} == gate_ids(module)
    assert gate_groups[0]["weight_decay"] == 0.0 and gate_groups[0]["lr"] == 0.05
    counted = [id(p) for g in groups for p in g["params"]]
    assert sorted(counted) == sorted(id(p) for p in module.parameters())  # every parameter exactly once
    for step in (0, 5, 50, 99):
        schedule_step(module, optimizer, step)
        assert gate_groups[0]["lr"] == 0.05
        assert all(g["lr"] < 1e-4 + 1e-12 for g in groups if g is not gate_groups[0])
    # One step moves a log-alpha by about gate_lr (Adam), which 1e-4 never could.
    before = [g.log_alpha.detach().clone() for layers in attached_gates(module.compressible_network()).values()
              for g in layers]
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    after = [g.log_alpha.detach() for layers in attached_gates(module.compressible_network()).values()
             for g in layers]
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(b - a, torch.full_like(b, 0.05), rtol=1e-3, atol=1e-4)


def test_without_gate_lr_gates_follow_the_schedule() -> None:
    module = nmt_module(gates={"types": ["encoder_self"], "l0_lambda": 0.1})
    optimizer = module.configure_optimizers()
    assert len(optimizer.param_groups) == 2
    schedule_step(module, optimizer, 50)
    assert len({g["lr"] for g in optimizer.param_groups}) == 1


def test_gates_lr_must_be_positive() -> None:
    with pytest.raises(ValueError, match="gates.lr must be > 0"):
        nmt_module(gates={"types": ["encoder_self"], "lr": 0.0})


def test_scratch_init_has_pruned_layout_and_fresh_dense_weights(tmp_path: Path) -> None:
    trained = nmt_module(seed=5)
    prune_model(trained.model, PLAN)
    pruned_ckpt = tmp_path / "pruned.ckpt"
    save_like_lightning(trained, pruned_ckpt)
    heads = write_scratch_init(pruned_ckpt, tmp_path / "init.ckpt", seed=7)
    assert heads == {k: [len(layer) for layer in v] for k, v in PLAN.items()}
    _, fresh = load_task_module(tmp_path / "init.ckpt")  # reloads from the file alone
    assert head_config(fresh.model) == head_config(trained.model)
    expected = nmt_module(seed=7)  # a dense model initialised from the same seed, cut to the same heads
    apply_head_config(expected.model, head_config(trained.model))
    for (name, p), q in zip(fresh.state_dict().items(), expected.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert not torch.equal(fresh.model.encoder[0].self_attn.qkv_proj.weight,
                           trained.model.encoder[0].self_attn.qkv_proj.weight)


def test_scratch_init_refuses_gated_models() -> None:
    with pytest.raises(ValueError, match="without gates"):
        scratch_init(nmt_module(gates={"types": ["encoder_self"]}))


def test_curve_prunes_each_fraction_taylor_and_random() -> None:
    module = nmt_module().eval()
    total = sum(a.num_heads for attns in attention_modules(module.model).values() for a in attns)
    scores = {k: torch.arange(len(a) * 4, dtype=torch.float).view(len(a), 4)
              for k, a in attention_modules(module.model).items()}
    rows = list(head_pruning.curve(module, lambda: scores, lambda m: float(sum(head_pruning.heads_kept(m.model)
                                                                                .values())), [0.0, 0.5, 1.0], 2))[-1]
    assert [r["taylor"] for r in rows] == [total, total / 2, 0]
    assert [r["random_mean"] for r in rows] == [total, total / 2, 0]
    assert sum(a.num_heads for attns in attention_modules(module.model).values() for a in attns) == total  # copies


def test_time_models_gives_one_median_per_batch_and_model() -> None:
    models = {"a": nmt_module().model.eval(), "b": nmt_module(seed=1).model.eval()}
    batches = [{"src": torch.randint(4, 50, (2, 5)), "tgt_in": torch.randint(4, 50, (2, 4))} for _ in range(3)]
    times = head_pruning.time_models(models, batches, rounds=2)
    assert set(times) == {"a", "b"} and all(len(t) == 3 and min(t) > 0 for t in times.values())


def test_report_markdown_plot_and_heatmap(tmp_path: Path) -> None:
    rows = [{"fraction": f, "heads_kept": {"enc": 4}, "taylor": 30 - f, "random_0": 29 - f, "random_mean": 29 - f}
            for f in (0.0, 0.5)]
    png = head_pruning_report.plot_curve(rows, "BLEU", "t", tmp_path / "c.png")
    assert Image.open(png).size[0] > 100
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "g.gif", save_all=True, append_images=frames[1:])
    last = Image.open(head_pruning_report.heatmap_from_gif(tmp_path / "g.gif", tmp_path / "h.png"))
    assert last.convert("RGB").getpixel((0, 0))[2] > 200  # the last (blue) frame
    state = {"meta": {"teacher": "t.ckpt", "teacher_epochs": 18, "git_commit": "abc"},
             "gates": {"epochs": 2, "gate_threshold": 0.5, "teacher_bleu": 38.0,
                       "teacher_heads": {"enc": 12, "dec": 12, "cross": 12}, "heatmap": "h.png",
                       "rows": [{"lambda": "0.05", "heads_kept": {"enc": 3, "dec": 9, "cross": 8}, "bleu": 37.9,
                                 "heads_per_layer": {"encoder_self": [2, 1]},
                                 "bleu_gated": 37.9, "bleu_lost": 0.1, "bleu_finetuned": 38.05,
                                 "bleu_lost_finetuned": -0.05, "finetune_epochs": 2, "params": 7_000_000,
                                 "flops": 1e7},
                                {"lambda": "per_type", "l0_lambda": {"encoder_self": 0.06, "decoder_self": 0.2},
                                 "kd": True, "gate_types": ["enc", "dec"], "seed": 7,
                                 "heads_kept": {"enc": 3, "dec": 3, "cross": 12}, "bleu": 37.6, "bleu_gated": 37.6,
                                 "heads_per_layer": {"encoder_self": [1, 2]},
                                 "bleu_lost": 0.4, "params": 6_500_000, "flops": 9e6}]},
             "scratch": {"budget": "6 epochs", "rows": [{"lambda": "other", "bleu": 35.5,
                                                         "heads_per_layer": {"encoder_self": [2, 1]}}]},
             "curve_nmt": {"metric": "BLEU", "score_sentences": 10, "random_seeds": 1, "rows": rows}}
    text = head_pruning_report.markdown(state)
    assert ("| 0.05 (enc/dec/cross) | 3 / 9 / 8 | 75 / 44 | 37.90 | -0.10 | 38.05 (+0.05, 2 ep finetune_pruned) "
            "| 35.50 |") in text
    assert "| enc 0.06 / dec 0.2 (enc/dec + KD, seed 7) | 3 / 3 / 12 | 75 / 50 | 37.60 | -0.40 | – | – |" in text
    assert "| 50 | 4 | 29.50 | 28.50 |" in text


def test_rows_of_another_teacher_are_dropped(tmp_path: Path) -> None:
    teacher, results = tmp_path / "teacher.ckpt", tmp_path / "head_pruning.json"
    teacher.write_bytes(b"first teacher")
    (tmp_path / "multi30k").mkdir()
    (tmp_path / "multi30k/train.en").write_text("a\n")
    argv = ["--teacher", str(teacher), "--work", str(tmp_path / "work"), "--results", str(results),
            "--data_dir", str(tmp_path)]
    state = head_pruning.Bench(head_pruning.parse_args(argv)).state
    results.write_text(json.dumps({**state, "gates": {"rows": []}, "curve_ner": {"rows": []}}))
    assert "gates" in head_pruning.Bench(head_pruning.parse_args(argv)).state  # same teacher: rows kept
    teacher.write_bytes(b"retrained teacher")
    state = head_pruning.Bench(head_pruning.parse_args(argv)).state
    assert "gates" not in state and "curve_ner" in state  # the tagger curve does not depend on the teacher


def test_a_seed_replicate_gets_rows_and_runs_of_its_own() -> None:
    args = head_pruning.parse_args(["--lambdas", "0.05", "0.06_enc"])
    assert head_pruning.gate_row_names(args) == ["0.05", "0.06_enc"]
    args = head_pruning.parse_args(["--lambdas", "0.05", "0.06_enc", "--gate_seed", "2"])
    assert head_pruning.gate_row_names(args) == ["0.05_seed2", "0.06_enc_seed2"]


def test_a_new_finetuning_recipe_keeps_the_previous_result(tmp_path: Path, monkeypatch) -> None:
    row = {"lambda": "0.06_enc", "checkpoint": "pruned.ckpt", "heads_kept": {"enc": 3, "dec": 12, "cross": 12},
           "bleu_finetuned": 37.5, "bleu_lost_finetuned": 0.33, "finetune_epochs": 2,
           "finetune_config": "configs/nmt/finetune_pruned_swa.yaml", "finetuned_checkpoint": "a/swa.ckpt"}
    section = {"teacher_bleu": 37.83, "teacher_heads": {"enc": 12, "dec": 12, "cross": 12}, "rows": [row]}
    args = head_pruning.parse_args(["--lambdas", "0.06_enc", "--gate_finetune_epochs", "2",
                                    "--finetune_config", "configs/nmt/finetune_pruned_swa_kd.yaml"])
    trained = []
    bench = SimpleNamespace(args=args, save=lambda stage, s: None,
                            train=lambda name, configs, init, epochs: trained.append(name) or tmp_path)
    monkeypatch.setattr("nmt.translate.load_translator", lambda ckpt: ckpt)
    monkeypatch.setattr(head_pruning, "nmt_bleu", lambda module, bench, beam: 37.7)
    head_pruning.finetune_gate_rows(bench, section)
    assert trained == ["gates_l0_0.06_enc_pruned_finetune_pruned_swa_kd2"]
    assert row["bleu_finetuned"] == 37.7 and row["finetune_config"].endswith("finetune_pruned_swa_kd.yaml")
    assert row["earlier_finetunes"] == [{"bleu_finetuned": 37.5, "bleu_lost_finetuned": 0.33, "finetune_epochs": 2,
                                         "finetune_config": "configs/nmt/finetune_pruned_swa.yaml",
                                         "finetuned_checkpoint": "a/swa.ckpt"}]
    head_pruning.finetune_gate_rows(bench, section)  # this recipe is done now: nothing is retrained
    assert len(trained) == 1
