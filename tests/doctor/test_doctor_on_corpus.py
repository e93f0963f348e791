"""The doctor on its corpus: every marked finding at its line, nothing on the clean scripts.

The scripts run in this process through the CLI's entry point (a subprocess each would
spend most of its time importing torch); ``test_cli.py`` covers the real command line.
"""

import json
import os

import pytest

from gradwise import cli
from tests.doctor.corpus import REPO_ROOT, load_corpus

SCRIPTS = load_corpus()


def run_doctor(script, tmp_path, capsys) -> tuple[int, set, bool]:
    out = tmp_path / "findings.json"
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        code = cli.main(["doctor", str(script.path.relative_to(REPO_ROOT)), "--steps", "3", "--json", str(out)])
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    found = set()
    report = json.loads(out.read_text())
    assert report["internal_errors"] == [], report["internal_errors"]
    findings = report["findings"]
    for f in findings:
        if f["severity"] in ("error", "warning"):
            path = os.path.realpath(os.path.join(REPO_ROOT, f["file"]))
            found.add((f["kind"], os.path.relpath(path, REPO_ROOT).replace(os.sep, "/"), f["line"]))
    return code, found, any(f["severity"] == "error" for f in findings)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.path.stem)
def test_doctor_finds_exactly_the_marked_problems(script, tmp_path, capsys):
    code, found, errors = run_doctor(script, tmp_path, capsys)
    assert found == set(script.expected)
    # exit 1 with error findings or when the script fails; warnings alone (unused parameters) exit 0
    assert code == (1 if errors or script.expect_exit else 0)
    assert code == 0 or not script.clean


def test_the_corpus_covers_every_kind():
    from gradwise.doctor import KINDS

    marked = {kind for s in SCRIPTS for kind, _, _ in s.expected}
    assert marked == set(KINDS)
    assert sum(s.clean for s in SCRIPTS) >= 10
