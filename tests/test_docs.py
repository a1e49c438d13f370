"""docs/results/*.md are generated from the committed result JSON and study notes, and must not be stale."""

from __future__ import annotations

import re

from conftest import REPO

from benchmarks import docs


def test_generated_results_pages_are_up_to_date():
    # fails after a new result or a notes edit until `python -m benchmarks.docs` is run and committed
    assert docs.stale() == []


def test_every_study_folder_has_notes_results_and_a_page():
    for study in docs.STUDIES:
        assert (REPO / "benchmarks" / study / "NOTES.md").is_file()
        assert any((REPO / "benchmarks/results" / study).glob("*.json"))


def test_readme_is_a_short_user_guide_linking_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"docs/results/(\w+)\.md", readme))
    assert linked == set(docs.STUDIES)
