"""Deployable compression: int8 / bf16 PyTorch and ONNX Runtime (fp32, int8) for every model kind, quality and speed
measured side by side in this one process, models alternating, medians, on real data.

    python -m benchmarks.deploy.run [--stages sts ner nmt] [--repeats 15]

Models (each also as int8 and bf16 PyTorch, and as ONNX Runtime fp32 and int8, all from the same weights):
* **sts**: the packaged all-MiniLM-L6-v2 teacher and the issue-6 pruned + distilled student
  (`prune_distill.py --config configs/sts/minilm_prune_distill.yaml --baselines false --output_dir
  benchmarks/work/deploy_sts`); STS-B dev en/de/ru Spearman at the encoder's own maximum length (256);
  latency of the encoder forward on real dev sentences, batch 1 / 16 / 64.
* **ner**: the 0.90 tagger (`python -m benchmarks.ner.run --variants with_casing_soup2_constrained`), decoded by
  IOB2-constrained Viterbi; test (eng.testb) entity F1; tagging speed (`tag`, batch 32) on 512 test sentences;
  forward latency at batch 1 / 16 / 64. `tagger int8-sensitive` keeps in fp32 one linear layer, chosen by
  `sensitivity_scan` on eng.testa (never test): of the type whose int8 costs the most dev F1, the layer that costs
  the most. With it, the <= 6M KD student
  distilled from that tagger (`python -m benchmarks.compression.run --teacher TAGGER --constrained --rows teacher
  kd_student_6m --student-epochs 15 --work-dir benchmarks/work/ner_student ...`) as fp32, int8 and ONNX Runtime int8.
* **nmt**: the shared `make train` checkpoint and a 61 %-heads-pruned copy (Taylor importance, 3 / 3 / 8 heads kept
  as in the head-pruning study, no recovery fine-tuning); test2016 beam-5 BLEU; decoding sentences/s (beam 5) on
  256 test sentences; `translate` latency of batches of 1 / 16 / 64 sentences. int8 includes the output
  projection (an untied int8 copy of the embedding matrix); `teacher int8-sensitive` keeps one layer fp32,
  chosen like the tagger's on val (greedy).
Parity: max |ONNX Runtime - PyTorch| of the outputs (logits / embeddings / first-step logits) on two padded real
batches of different lengths. Writes `benchmarks/results/deploy/deploy.json` after every stage (+ deploy.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import run_stages
from compression.measure import latency, parameter_counts, time_alternating
from compression.quantize import quantize, sensitivity_scan, serialized_bytes
from core.data_dir import resolve_data_dir
from core.hf_import import default_checkpoint_dir
from core.onnx import export_onnx, int8_path, load_onnx
from core.tasks import get_task
from core.training import save_module_checkpoint

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / "benchmarks/work/deploy"
RESULT = REPO / "benchmarks/results/deploy/deploy.json"
SHARED_NMT = REPO.parent / "shared/checkpoints/nmt_small_swa.ckpt"
STS_STUDENT = REPO / "benchmarks/work/deploy_sts/student.ckpt"
NER_TAGGER = REPO / "benchmarks/work/ner_conll/minilm_casing_teacher__soup2.ckpt"
NER_STUDENT = REPO / "benchmarks/work/ner_student/kd_student_6m.ckpt"  # benchmarks.compression.run, this teacher
PRUNE_61 = "encoder_self=9,decoder_self=9,decoder_cross=4"  # of 12 each: 3 / 3 / 8 kept, 22 of 36 heads pruned
BATCHES = (1, 16, 64)
log = logging.getLogger(__name__)


def deployments(task_name: str, checkpoint: Path, prefix: str, kinds: tuple[str, ...]) -> dict:
    """{f"{prefix} {kind}": module} for kinds among fp32, int8, bf16, onnx fp32, onnx int8 of one checkpoint."""
    task = get_task(task_name)
    out = {}
    if any(k.startswith("onnx") for k in kinds):
        onnx_file = WORK / f"{checkpoint.stem}.onnx"
        export_onnx(checkpoint, onnx_file, int8="onnx int8" in kinds, task=task_name)
    for kind in kinds:
        if kind in ("fp32", "int8", "bf16"):
            module = task.load(checkpoint)
            out[f"{prefix} {kind}"] = module if kind == "fp32" else quantize(module, kind)
        else:
            out[f"{prefix} {kind}"] = load_onnx(onnx_file if kind == "onnx fp32" else int8_path(onnx_file))
    return out


def _smoke(path: Path, args: argparse.Namespace) -> Path:
    """`path`, or with --smoke a copy of its first lines (cut at a blank line, so CoNLL sentences stay whole)."""
    if not args.smoke:
        return path
    lines = path.read_text(encoding="utf-8").splitlines()[:300]
    while lines and lines[-1].strip() and path.suffix not in (".en", ".de", ".csv"):
        lines.pop()
    out = WORK / "smoke" / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def max_diff(models: dict, reference: str, batches: list[tuple], fn=None) -> dict[str, float]:
    """max |model - reference| of the outputs on each batch, per model."""
    fn = fn or (lambda m, b: m(*b))
    with torch.inference_mode():
        want = [fn(models[reference], b).float() for b in batches]
        return {name: max(float((fn(m, b).float() - w).abs().max()) for b, w in zip(batches, want, strict=True))
                for name, m in models.items() if name != reference}


def sizes(models: dict) -> dict:
    """Parameters and serialized bytes of the PyTorch models (the ONNX graphs hold their own weights).

    An int8 model keeps every weight, packed: its parameter count is its fp32 sibling's."""
    out = {}
    for name, m in models.items():
        if "onnx" in name:
            continue
        fp32 = models[name.rsplit(" ", 1)[0] + " fp32"]
        out[name] = {"params": parameter_counts(fp32)["total"], "bytes": serialized_bytes(m)}
    return out


def sts_stage(args: argparse.Namespace) -> dict:
    """Teacher and student, five deployments each: Spearman at 256 and forward latency."""
    from sts.data import tokenize
    from sts.evaluate import default_files, evaluate
    from sts.module import SentenceEncoderModule

    folder = default_checkpoint_dir()
    teacher_ckpt = WORK / "sts_teacher.ckpt"
    if not teacher_ckpt.is_file():
        teacher = SentenceEncoderModule(checkpoint_dir=str(folder), data_spec={"tokenizer": str(folder),
                                                                               "max_length": 256}).eval()
        save_module_checkpoint(teacher, teacher_ckpt)
    kinds = ("fp32", "int8", "bf16", "onnx fp32", "onnx int8")
    models = {**deployments("sts", teacher_ckpt, "teacher", kinds), **deployments("sts", STS_STUDENT, "student", kinds)}
    files = {lang: _smoke(path, args) for lang, path in default_files(args.data_dir).items()}
    quality = {}
    for name, m in models.items():
        quality[name] = evaluate(m, files, max_length=256)
        log.info("sts %s %s", name, quality[name])
    from sts.data import read_sts

    sentences = [p.sentence1 for p in read_sts(files["en"])]
    tok = models["teacher fp32"].tokenizer
    gen = torch.Generator().manual_seed(0)
    pick = lambda n: [sentences[int(i)] for i in torch.randperm(len(sentences), generator=gen)[:n]]  # noqa: E731
    inputs = {b: tuple(tokenize(tok, pick(b), 256).values()) for b in BATCHES}
    timing = latency(models, inputs, repeats=args.repeats)
    parity_batches = [tuple(tokenize(tok, pick(n), 256).values()) for n in (16, 7)]
    parity = {**max_diff({n: m for n, m in models.items() if n.startswith("teacher")}, "teacher fp32",
                         parity_batches),
              **max_diff({n: m for n, m in models.items() if n.startswith("student")}, "student fp32",
                         parity_batches)}
    rows = []
    base_en, base_ms = quality["teacher fp32"]["spearman_en"], timing.at("teacher fp32", 16)
    for name in models:
        rows.append({"name": name, **quality[name], "quality_vs_teacher": 100 * quality[name]["spearman_en"] / base_en,
                     "latency_ms": {str(b): timing.at(name, b) for b in BATCHES},
                     "speedup_b16_vs_teacher": base_ms / timing.at(name, 16),
                     "max_abs_diff_vs_fp32": parity.get(name)})
    return {"rows": rows, "sizes": sizes(models), "threads": timing.threads, "repeats": timing.repeats,
            "targets": "student int8: >= 99.0 % of the fp32 teacher's en Spearman at >= 3.0x its speed (batch 16)"}


def ner_stage(args: argparse.Namespace) -> dict:
    """The 0.90 tagger, five deployments: test F1, tagging speed (batch 32), forward latency."""
    from ner.conll import read_conll, to_iob2
    from ner.module import score_conll

    conll = resolve_data_dir(args.data_dir, "conll2003")
    dev = _smoke(conll / "eng.testa", args)
    scan, keep = sensitive_layer("ner", NER_TAGGER, lambda m: 100 * score_conll(m, dev)["f1"], _constrained)
    models = deployments("ner", NER_TAGGER, "tagger", ("fp32", "int8", "bf16", "onnx fp32", "onnx int8"))
    models["tagger int8-sensitive"] = quantize(get_task("ner").load(NER_TAGGER), "int8", exclude=[keep])
    if NER_STUDENT.is_file():
        models |= deployments("ner", NER_STUDENT, "student", ("fp32", "int8", "onnx int8"))
    for m in models.values():
        m.constrained_decoding = True
    test = _smoke(conll / "eng.testb", args)
    quality = {}
    for name, m in models.items():
        scores = score_conll(m, test)
        quality[name] = {k: scores[k] for k in ("f1", "precision", "recall")}
        log.info("ner %s %s", name, quality[name])
    sentences = [s.tokens for s in to_iob2(read_conll(test))[0]]
    speed_set = sentences[: args.speed_sentences]
    seconds = time_alternating({n: (lambda m=m: m.tag(speed_set, batch_size=32)) for n, m in models.items()},
                               repeats=max(3, args.repeats // 5))
    tag_speed = {n: len(speed_set) / statistics.median(s) for n, s in seconds.items()}
    inputs = {b: _ner_batch(models["tagger fp32"], sentences, b, seed=b) for b in BATCHES}
    timing = latency(models, inputs, repeats=args.repeats)
    parity_batches = [_ner_batch(models["tagger fp32"], sentences, n, seed=n + 1) for n in (16, 5)]
    parity = {}
    for prefix in {n.split(" ")[0] for n in models}:  # each deployment against its own fp32 model
        parity |= max_diff({n: m for n, m in models.items() if n.startswith(prefix + " ")}, f"{prefix} fp32",
                           parity_batches)
    rows = [{"name": n, **quality[n], "f1_change_points": 100 * (quality[n]["f1"] - quality["tagger fp32"]["f1"]),
             "f1_change_vs_own_fp32": 100 * (quality[n]["f1"] - quality[n.rsplit(" ", 2 if "onnx" in n else 1)[0]
                                                                          + " fp32"]["f1"]),
             "tag_sents_per_s_b32": tag_speed[n], "tag_speedup_b32": tag_speed[n] / tag_speed["tagger fp32"],
             "latency_ms": {str(b): timing.at(n, b) for b in BATCHES}, "max_abs_diff_vs_fp32": parity.get(n)}
            for n in models]
    return {"rows": rows, "sizes": sizes(models), "threads": timing.threads, "repeats": timing.repeats,
            "speed_sentences": len(speed_set), "checkpoint": str(NER_TAGGER.relative_to(REPO)),
            "sensitivity_scan_dev": scan, "int8_sensitive_keeps_fp32": keep,
            "targets": "int8: test F1 drop <= 0.3 points at >= 1.8x tagging speed (batch 32)"}


def sensitive_layer(task_name: str, checkpoint: Path, dev_quality, prepare=lambda m: m) -> tuple[dict, str]:
    """`sensitivity_scan` of a checkpoint on a dev set (never test): one linear type int8 at a time, then one layer
    at a time of the type whose int8 costs the most; the layer costing the most is the one the `int8-sensitive`
    deployment keeps in fp32."""
    fresh = lambda: prepare(get_task(task_name).load(checkpoint))  # noqa: E731
    scans = {"types": sensitivity_scan(fresh, dev_quality)}
    scans["layers"] = sensitivity_scan(fresh, dev_quality, within=_worst(scans["types"]))
    for level, scan in scans.items():
        log.info("%s sensitivity (dev change, %s quantised alone) %s", task_name, level,
                 [(r["type"], round(r["change"], 3)) for r in scan])
    return scans, _worst(scans["layers"])


def _worst(scan: list[dict]) -> str:
    return min((r for r in scan if r["type"] not in ("none", "all")), key=lambda r: r["change"])["type"]


def _constrained(module):
    module.constrained_decoding = True
    return module


def _ner_batch(module, sentences: list[list[str]], n: int, seed: int) -> tuple:
    """(input_ids, attention_mask, casing) of `n` random real test sentences, padded."""
    from ner.align import SentenceEncoder
    from ner.data import collate

    gen = torch.Generator().manual_seed(seed)
    encoder = SentenceEncoder(module.tokenizer, module.labels, module.max_length)
    picked = [int(i) for i in torch.randperm(len(sentences), generator=gen)[:n]]
    examples = [encoder(sentences[i], i, None, "")[0] for i in picked]
    batch = collate(examples, module.tokenizer.token_to_id("[PAD]") or 0)
    return batch["input_ids"], batch["attention_mask"], batch["casing"]


def nmt_stage(args: argparse.Namespace) -> dict:
    """The shared teacher (five deployments) and the 61 %-pruned copy (fp32, int8): BLEU, decoding speed."""
    from nmt.translate import evaluate_file, translate_lines

    pruned = WORK / "nmt_pruned61.ckpt"
    data = resolve_data_dir(args.data_dir, "multi30k")
    if not pruned.is_file():
        subprocess.run([sys.executable, str(REPO / "prune_heads.py"), "--ckpt", str(SHARED_NMT), "--task", "nmt",
                        "--method", "taylor", "--prune", PRUNE_61, "--score_data", str(data / "train.en"),
                        str(data / "train.de"), "--output", str(pruned)], check=True, cwd=REPO)
    dev_src, dev_ref = _smoke(data / "val.en", args), _smoke(data / "val.de", args)
    # Greedy on val for the scan (a dozen decodes; the ranking of types is what it is for); beam 5 on test after.
    scan, keep = sensitive_layer("nmt", SHARED_NMT, lambda m: evaluate_file(m, dev_src, dev_ref, beam_size=1)["bleu"])
    models = {**deployments("nmt", SHARED_NMT, "teacher", ("fp32", "int8", "bf16", "onnx fp32", "onnx int8")),
              "teacher int8-sensitive": quantize(get_task("nmt").load(SHARED_NMT), "int8", exclude=[keep]),
              **deployments("nmt", pruned, "pruned 61%", ("fp32", "int8"))}
    src, ref = _smoke(data / "test_2016_flickr.en", args), _smoke(data / "test_2016_flickr.de", args)
    quality, hyps = {}, {}
    for name, m in models.items():
        result = evaluate_file(m, src, ref, beam_size=5)
        hyps[name] = result.pop("hypotheses")
        quality[name] = {k: result[k] for k in ("bleu", "chrf")}
        log.info("nmt %s %s", name, quality[name])
    lines = src.read_text(encoding="utf-8").splitlines()
    subset = lines[: args.speed_sentences // 2]
    seconds = time_alternating({n: (lambda m=m: translate_lines(m, subset, 5)) for n, m in models.items()},
                               repeats=max(3, args.repeats // 5))
    speed = {n: len(subset) / statistics.median(s) for n, s in seconds.items()}
    vocab = models["teacher fp32"].vocab
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> torch.Tensor:  # n random test sentences as padded source ids (+ EOS)
        from nmt.data import pad
        from nmt.vocab import EOS_ID

        picked = [lines[int(i)] for i in torch.randperm(len(lines), generator=gen)[:n]]
        return pad([s + [EOS_ID] for s in vocab.encode_src(picked)])

    beam5 = {n: functools.partial(m.translate, beam_size=5) for n, m in models.items()}  # `latency` calls model(*x)
    timing = latency(beam5, {b: (batch(b),) for b in BATCHES}, repeats=max(3, args.repeats // 3))

    def first_step(m, b):  # next-token logits after BOS: encoder + one decoder step, through each runtime
        memory, mask = m.model.encode(b[0])
        bos = torch.full((len(b[0]), 1), m.cfg.bos_id, dtype=torch.long)
        return m.model.decode(bos, memory, mask, m.model.new_cache(), offset=0)

    parity_batches = [(batch(16),), (batch(5),)]
    teacher_models = {n: m for n, m in models.items() if n.startswith("teacher")}
    parity = max_diff(teacher_models, "teacher fp32", parity_batches, first_step)
    rows = []
    for n in models:
        base = "teacher fp32" if n.startswith("teacher") else "pruned 61% fp32"
        same = sum(a == b for a, b in zip(hyps[n], hyps[base], strict=True))
        rows.append({"name": n, **quality[n], "bleu_change": quality[n]["bleu"] - quality[base]["bleu"],
                     "decode_sents_per_s_beam5": speed[n], "decode_speedup": speed[n] / speed[base],
                     "latency_ms": {str(b): timing.at(n, b) for b in BATCHES},
                     "same_hypotheses_as_fp32": same, "sentences": len(hyps[n]),
                     "max_abs_diff_vs_fp32": parity.get(n)})
    return {"rows": rows, "sizes": sizes(models), "threads": timing.threads, "pruned_heads": PRUNE_61,
            "speed_sentences": len(subset), "sensitivity_scan_dev": scan, "int8_sensitive_keeps_fp32": keep,
            "targets": "int8: beam-5 test2016 BLEU drop <= 0.3 at >= 1.5x decoding sentences/s"}


STAGES = {"sts": sts_stage, "ner": ner_stage, "nmt": nmt_stage}


def main(argv: list[str] | None = None) -> dict:
    """Run the stages, writing the JSON (and markdown) after each."""
    from benchmarks.deploy.report import render_result

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    p.add_argument("--repeats", type=int, default=15, help="timed rounds of forward latency (median)")
    p.add_argument("--speed_sentences", type=int, default=512, help="test sentences for tagging speed")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--smoke", action="store_true", help="first 300 lines of each file, 2 repeats, results in work/")
    args = p.parse_args(argv)
    if args.smoke:
        args.repeats, args.speed_sentences, args.out = 2, 32, WORK / "smoke/deploy.json"
    WORK.mkdir(parents=True, exist_ok=True)
    return run_stages("deploy", STAGES, args, render_result)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
