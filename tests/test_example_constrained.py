"""examples/constrained_parameter.py shows the transform-once failure and the fix."""

from tests.examples import load_example, run_example


def load():
    return load_example("constrained_parameter")


def test_transform_once_fails_on_the_second_backward():
    example = load()
    assert example.train_transform_once(steps=1) is None  # the first step works
    assert "Trying to backward through the graph a second time" in example.train_transform_once(steps=2)


def test_constrained_reaches_the_target_inside_the_support():
    example = load()
    history = example.train_constrained()
    assert history[0] == 0.5
    assert all(0.0 < p < 1.0 for p in history)
    assert abs(history[-1] - example.TARGET) < 1e-3


def test_script_runs():
    out = run_example("constrained_parameter")
    assert out.returncode == 0, out.stderr
    assert "step 2 fails: RuntimeError: Trying to backward through the graph a second time" in out.stdout
    assert "p = 0.9000 after 60 steps" in out.stdout
