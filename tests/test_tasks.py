"""core.tasks: the registry, the task recorded in checkpoints, and the import rules that keep core generic."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import REPO, save_like_lightning, tiny_tagger

from core.tasks import TASK_KEY, Task, get_task, load_task_module, register_task, registered_tasks

TASK_PACKAGES = ("nmt", "ner", "sts")


def imported_packages(path: Path) -> set[str]:
    """Top-level package names that a Python file imports anywhere (module level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package,forbidden", [
    ("core", TASK_PACKAGES), ("compression", TASK_PACKAGES), ("sts", ("nmt", "ner")), ("ner", ("nmt", "sts")),
    ("nmt", ("ner", "sts")),
])
def test_import_rules(package, forbidden):
    # core/ and compression/ know no task; tasks know no other task.
    offenders = {str(p.relative_to(REPO)): sorted(imported_packages(p) & set(forbidden))
                 for p in sorted((REPO / package).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_builtin_tasks_found_by_name():
    for name in TASK_PACKAGES:
        task = get_task(name)  # imports <name>.task on first use
        assert task.name == name and task.module_class.task_name == name
    assert set(TASK_PACKAGES) <= set(registered_tasks())


def test_unknown_task_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown task 'nope'.*registered tasks are"):
        get_task("nope")


def test_a_second_class_with_a_taken_name_is_refused():
    get_task("ner")

    class Impostor(Task):
        name = "ner"

    with pytest.raises(ValueError, match="registered twice"):
        register_task(Impostor)


def test_checkpoint_records_its_task_and_reloads_through_the_registry(tmp_path, tokenizer_file):
    tagger = tiny_tagger(tokenizer_file).eval()
    ckpt = save_like_lightning(tagger, tmp_path / "tagger.ckpt")
    assert ckpt[TASK_KEY] == "ner"
    task, loaded = load_task_module(tmp_path / "tagger.ckpt")
    assert task.name == "ner" and not loaded.training
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, torch.ones_like(ids)), tagger(ids, torch.ones_like(ids)))


def test_missing_task_files_are_named(tmp_path, tokenizer_file):
    task = get_task("ner")
    with pytest.raises(ValueError, match="needs 1 file\\(s\\): CoNLL file; got 0"):
        task.scoring_batches(tiny_tagger(tokenizer_file), [], 10, 2)
    with pytest.raises(ValueError, match="CoNLL file 'nope.txt' does not exist"):
        task.check_files(["nope.txt"], task.eval_files, "quality")
