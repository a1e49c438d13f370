"""Multi30k en->de benchmark for the small NMT config under a wall-clock budget.

    python -m benchmarks.nmt.run --budget_minutes 110

1. Training throughput of our transformer vs a plain `torch.nn.Transformer` of the same
   size, measured side by side on the same real batches (median target tokens/s).
2. Trains `configs/nmt/small.yaml` with as many epochs as the budget allows (estimated from
   the measured throughput; `max_time` is the hard stop), SWA over the last epochs.
3. Decodes val and test2016 with greedy and beam 5 from the final checkpoint.
Writes `benchmarks/results/nmt/nmt_multi30k.json` after every stage (partial results survive).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from typing_extensions import override

from core.cli import main as train_main
from core.data_dir import REPO_ROOT
from core.layers import sinusoidal_positions
from core.training import git_commit
from nmt.data import TranslationDataModule
from nmt.loss import label_smoothed_ce
from nmt.model import Seq2SeqConfig, Seq2SeqTransformer, count_parameters
from nmt.translate import evaluate_file, load_translator

log = logging.getLogger(__name__)


class TorchReference(nn.Module):
    """`torch.nn.Transformer` with the same embedding, positions and tied output as ours."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("pos", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.transformer = nn.Transformer(
            cfg.d_model, cfg.num_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.d_ff, cfg.dropout,
            activation=cfg.activation, batch_first=True, norm_first=cfg.pre_norm,
        )

    @override
    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.cfg.d_model)
        s = self.embed(src) * scale + self.pos[: src.shape[1]]
        t = self.embed(tgt_in) * scale + self.pos[: tgt_in.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], dtype=torch.bool)
        pad = src == self.cfg.pad_id
        h = self.transformer(s, t, tgt_mask=causal, src_key_padding_mask=pad, memory_key_padding_mask=pad,
                             tgt_is_causal=True)
        return h @ self.embed.weight.t()


def training_throughput(cfg: Seq2SeqConfig, batches: list[dict], rounds: int) -> dict:
    """Median target tokens/s of ours vs the torch reference, alternating per batch."""
    torch.manual_seed(0)
    models = {"ours": Seq2SeqTransformer(cfg), "torch_nn_transformer": TorchReference(cfg)}
    optims = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    rates: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds + 1):
        for batch in batches:
            for name, model in models.items():
                model.train()
                start = time.perf_counter()
                logits = model(batch["src"], batch["tgt_in"])
                loss, ntok = label_smoothed_ce(logits, batch["tgt_out"], 0.1, cfg.pad_id)
                (loss / ntok).backward()
                optims[name].step()
                optims[name].zero_grad(set_to_none=True)
                if r > 0:  # round 0 warms up allocators and kernels
                    rates[name].append(ntok / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"ours_tokens_per_s": med["ours"], "torch_tokens_per_s": med["torch_nn_transformer"],
            "ratio": med["ours"] / med["torch_nn_transformer"], "steps_measured": len(rates["ours"]),
            "params_ours": count_parameters(models["ours"]),
            "params_torch": count_parameters(models["torch_nn_transformer"])}


def main() -> None:
    """Train the small config, then measure BLEU, decoding speed and training throughput vs torch."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_minutes", type=float, default=110.0)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs/nmt/small.yaml"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results/nmt/nmt_multi30k.json")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "benchmarks/work/nmt_multi30k")
    parser.add_argument("--epochs", type=int, help="epochs to train (default: as many as the budget allows)")
    parser.add_argument("--throughput_batches", type=int, default=8)
    parser.add_argument("--throughput_rounds", type=int, default=3)
    parser.add_argument("--extra", nargs="*", default=[], help="more train.py overrides")
    args = parser.parse_args()
    result: dict = {"git_commit": git_commit(), "config": args.config, "budget_minutes": args.budget_minutes,
                    "torch_threads": torch.get_num_threads()}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        log.info("%s", json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))

    # 1. Side-by-side throughput on real batches of the training data.
    import yaml

    config = yaml.safe_load(Path(args.config).read_text())
    data_args = config["data"]["init_args"]
    dm = TranslationDataModule(**data_args)
    dm.setup()
    arch = Seq2SeqConfig(**config["model"]["init_args"]["arch"], **dm.spec())
    loader = dm.train_dataloader()
    batches = [b for _, b in zip(range(args.throughput_batches), loader, strict=False)]
    result["throughput"] = training_throughput(arch, batches, args.throughput_rounds)
    result["params"] = result["throughput"]["params_ours"]
    save()

    # 2. Train within the budget.
    train_tokens = sum(len(t) + 1 for t in dm.splits["train"].tgt_ids)
    epoch_s = train_tokens / result["throughput"]["ours_tokens_per_s"] * 1.15 + 25  # + greedy validation
    max_epochs = args.epochs or max(1, int(args.budget_minutes * 60 // epoch_s))
    result["planned_epochs"] = max_epochs
    save()
    hh, mm = divmod(int(args.budget_minutes), 60)
    start = time.perf_counter()
    cli = train_main([
        "--config", args.config, "--trainer.max_epochs", str(max_epochs),
        "--trainer.max_time", f"00:{hh:02d}:{mm:02d}:00",
        "--trainer.logger.init_args.save_dir", str(args.work_dir), "--test", "false", *args.extra,
    ])
    train_s = time.perf_counter() - start
    trainer = cli.trainer
    result.update({
        "train_minutes": train_s / 60, "epochs_done": trainer.current_epoch, "steps": trainer.global_step,
        "train_tokens_per_s": train_tokens * trainer.current_epoch / train_s,
        "run_dir": str(trainer.log_dir),
    })
    save()

    # 3. Decode val and test2016 from the final (SWA) checkpoint.
    ckpt_dir = Path(trainer.checkpoint_callback.dirpath)
    ckpt = ckpt_dir / "swa.ckpt" if (ckpt_dir / "swa.ckpt").exists() else ckpt_dir / "last.ckpt"
    result["checkpoint"] = str(ckpt)
    module = load_translator(ckpt)
    root = dm.root
    for split, stem in (("val", "val"), ("test2016", "test_2016_flickr")):
        for beam in (1, 5):
            scores = evaluate_file(module, root / f"{stem}.en", root / f"{stem}.de", beam)
            hyps = scores.pop("hypotheses")
            key = "greedy" if beam == 1 else f"beam{beam}"
            result.setdefault(split, {})[key] = scores
            if beam == 5:
                result[split].update(bleu=scores["bleu"], chrf=scores["chrf"])
                result.setdefault("samples", {})[split] = hyps[:5]
            result["sacrebleu_signature"] = scores["bleu_signature"]
            save()
    result["decode_sents_per_s"] = {"greedy": result["test2016"]["greedy"]["sents_per_s"],
                                    "beam5": result["test2016"]["beam5"]["sents_per_s"]}
    save()


if __name__ == "__main__":
    main()
