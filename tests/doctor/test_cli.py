"""`gradwise doctor SCRIPT`: exit status, JSON, script arguments, usage errors."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def doctor(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "gradwise", "doctor", *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_broken_script_exits_1_and_writes_json(tmp_path):
    out = tmp_path / "f.json"
    result = doctor("examples/doctor/broken_graph_break_vq_argmin.py", "--steps", "2", "--json", str(out))
    assert result.returncode == 1, result.stderr
    assert "ERROR graph-break at examples/doctor/broken_graph_break_vq_argmin.py:25" in result.stdout
    findings = json.loads(out.read_text())["findings"]
    assert [(f["kind"], f["file"], f["line"]) for f in findings] == [
        ("graph-break", "examples/doctor/broken_graph_break_vq_argmin.py", 25)
    ]
    assert set(findings[0]) == {"kind", "severity", "message", "file", "line", "parameters", "fix"}


def test_clean_script_exits_0():
    result = doctor("examples/doctor/clean_mlp_cross_entropy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 finding(s)" in result.stdout


def test_script_arguments_and_run_to_end(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, torch
            model = torch.nn.Linear(2, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for step in range(int(sys.argv[1])):
                opt.zero_grad()
                model(torch.randn(4, 2)).pow(2).mean().backward()
                opt.step()
            print("finished", sys.argv[1:])
            """
        )
    )
    stopped = doctor(str(script), "--steps", "2", "--", "6", "extra")
    assert stopped.returncode == 0 and "finished" not in stopped.stdout
    assert "in 2 training step(s)" in stopped.stdout
    finished = doctor(str(script), "--steps", "2", "--run-to-end", "--", "6", "extra")
    assert finished.returncode == 0 and "finished ['6', 'extra']" in finished.stdout


def test_script_that_raises_is_explained_and_exits_1():
    result = doctor("examples/doctor/broken_stale_graph_derived_gate.py")
    assert result.returncode == 1
    assert "ERROR stale-graph at examples/doctor/broken_stale_graph_derived_gate.py:21" in result.stdout
    assert "The script raised: RuntimeError: Trying to backward through the graph a second time" in result.stdout


def test_usage_errors_exit_2(tmp_path):
    assert doctor(str(tmp_path / "missing.py")).returncode == 2
    assert doctor("examples/doctor/clean_mlp_cross_entropy.py", "--steps", "0").returncode == 2
    assert doctor("examples/doctor/clean_mlp_cross_entropy.py", "--bogus").returncode == 2
    assert "--run-to-end" in doctor("--help").stdout
