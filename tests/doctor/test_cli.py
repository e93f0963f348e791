"""`gradwise doctor SCRIPT`: exit status, the report, JSON, script arguments, crashes,
runs that watched nothing, usage errors."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gradwise

ROOT = Path(__file__).resolve().parents[2]


def doctor(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "gradwise", "doctor", *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def write(tmp_path, name, code):
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    return script


def test_broken_script_exits_1_and_writes_json(tmp_path):
    out = tmp_path / "f.json"
    script = "examples/doctor/broken_graph_break_vq_argmin.py"
    result = doctor(script, "--steps", "2", "--json", str(out))
    assert result.returncode == 1, result.stderr
    assert f"ERROR graph-break at {script}:25 (step 1)" in result.stdout
    assert "codes = distances.argmin(dim=1)" in result.stdout  # the offending source line
    assert "z + (q - z).detach()" in result.stdout  # the fix for a codebook lookup
    # its 5 steps: 2 watched, the other 3 (of up to 4 x 2) for non-finite values only, so it ends by itself
    assert "Then 3 more step(s) were watched for non-finite values and loop mistakes only." in result.stdout
    assert "stopped at its" not in result.stdout
    report = json.loads(out.read_text())
    assert set(report) == {
        "version",
        "script",
        "steps",
        "numerics_steps",
        "stopped",
        "crashed",
        "internal_errors",
        "findings",
    }
    assert report["version"] == gradwise.__version__ and report["script"] == script
    state = (report["steps"], report["numerics_steps"], report["stopped"], report["crashed"], report["internal_errors"])
    assert state == (2, 3, False, None, [])
    findings = report["findings"]
    assert [(f["kind"], f["file"], f["line"], f["step"]) for f in findings] == [("graph-break", script, 25, 1)]
    assert set(findings[0]) == {"kind", "severity", "message", "file", "line", "parameters", "fix", "step", "data"}
    assert findings[0]["parameters"] == ["encoder.bias", "encoder.weight"]


def test_clean_script_exits_0():
    result = doctor("examples/doctor/clean_mlp_cross_entropy.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 finding(s) in 5 watched training step(s)" in result.stdout
    assert "No problem found in the gradient flow of the 5 watched step(s)" in result.stdout


def test_script_arguments_and_run_to_end(tmp_path):
    script = write(
        tmp_path,
        "train.py",
        """
        import sys, torch
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(int(sys.argv[1])):
            opt.zero_grad()
            model(torch.randn(4, 2)).pow(2).mean().backward()
            opt.step()
        evaluator = torch.nn.Linear(2, 1)  # made and called after the watched steps
        evaluator(torch.randn(3, 2))
        print("finished", sys.argv[1:])
        """,
    )
    stopped = doctor(str(script), "--steps", "2", "--", "20", "extra")
    assert stopped.returncode == 0 and "finished" not in stopped.stdout
    assert "in 2 watched training step(s)" in stopped.stdout  # then 4 x 2 for non-finite values only
    assert "Then 8 more step(s)" in stopped.stdout and "stopped at its 11th backward()" in stopped.stdout
    out = tmp_path / "end.json"
    finished = doctor(str(script), "--steps", "2", "--run-to-end", "--json", str(out), "--", "20", "extra")
    assert finished.returncode == 0 and "finished ['20', 'extra']" in finished.stdout
    report = json.loads(out.read_text())
    assert report["findings"] == [] and report["stopped"] is False  # nothing after the watch is judged


def test_script_that_raises_is_explained_with_its_traceback(tmp_path):
    out = tmp_path / "crash.json"
    result = doctor("examples/doctor/broken_stale_graph_derived_gate.py", "--json", str(out))
    assert result.returncode == 1
    assert "ERROR stale-graph at examples/doctor/broken_stale_graph_derived_gate.py:21" in result.stdout
    assert "The script raised RuntimeError: Trying to backward through the graph a second time" in result.stdout
    assert "(explained above: stale-graph)" in result.stdout
    assert "Traceback (most recent call last; your code only):" in result.stdout
    assert "broken_stale_graph_derived_gate.py" in result.stdout.split("Traceback")[1]
    assert "torch/" not in result.stdout.split("Traceback")[1]  # user frames only
    crashed = json.loads(out.read_text())["crashed"]
    assert crashed["type"] == "RuntimeError" and "second time" in crashed["message"]
    assert "broken_stale_graph_derived_gate.py" in crashed["traceback"]


def test_unrelated_crash_prints_the_users_traceback(tmp_path):
    script = write(
        tmp_path,
        "shape_bug.py",
        """
        import torch

        def load():
            return torch.randn(4, 3)

        model = torch.nn.Linear(5, 1)
        model(load()).sum().backward()
        """,
    )
    result = doctor(str(script))
    assert result.returncode == 1
    tail = result.stdout.split("Traceback")[1]
    assert 'shape_bug.py", line 8' in tail and "RuntimeError" in tail


def test_no_watched_step_exits_1_and_says_why(tmp_path):
    never = write(tmp_path, "no_backward.py", "import torch\nprint(torch.nn.Linear(2, 2)(torch.randn(1, 2)).sum())\n")
    result = doctor(str(never))
    assert result.returncode == 1
    assert "No training step was watched" in result.stdout and "no backward() call was reached" in result.stdout
    assert "No problem found" not in result.stdout
    autograd = write(
        tmp_path,
        "autograd_grad.py",
        """
        import torch
        w = torch.randn(3, requires_grad=True)
        for _ in range(3):
            (g,) = torch.autograd.grad((w * 2).pow(2).sum(), w)
            with torch.no_grad():
                w -= 0.1 * g
        """,
    )
    result = doctor(str(autograd))
    assert result.returncode == 1
    assert "torch.autograd.grad (3 call(s))" in result.stdout


def test_usage_errors_exit_2_before_the_script_runs(tmp_path):
    marker = tmp_path / "ran"
    script = write(tmp_path, "touch.py", f"open({str(marker)!r}, 'w').close()\n")
    assert doctor(str(tmp_path / "missing.py")).returncode == 2
    assert doctor("examples/doctor/clean_mlp_cross_entropy.py", "--steps", "0").returncode == 2
    assert doctor("examples/doctor/clean_mlp_cross_entropy.py", "--bogus").returncode == 2
    for bad in (tmp_path / "no" / "such" / "dir" / "f.json", tmp_path):
        result = doctor(str(script), "--json", str(bad))
        assert result.returncode == 2 and "--json" in result.stderr, result.stderr
    assert not marker.exists()
    assert "--run-to-end" in doctor("--help").stdout
