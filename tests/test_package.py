"""The package's public surface, its import hygiene and its command line."""

import importlib
import subprocess
import sys
import textwrap

import pytest

import gradwise
import gradwise.errors

PUBLIC_MODULES = [
    "gradwise",
    "gradwise.ops",
    "gradwise.errors",
    "gradwise.testing",
    "gradwise.cluster",
    "gradwise.per_sample",
    "gradwise.doctor",
]
OPTIONAL = ["triton", "matplotlib", "tensorboard", "sklearn", "rich", "lightning", "pytorch_lightning"]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_imports(module_name):
    module = importlib.import_module(module_name)
    assert module.__all__, f"{module_name} has an empty __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it does not define: {missing}"
    for name in module.__all__:
        exec(f"from {module_name} import {name}", {})


def test_public_functions_have_docstrings_with_examples():
    import inspect

    import gradwise.ops as ops

    schedules = {"ExponentialTau", "LinearTau", "CosineTau", "EstimatorSwitch"}
    for name in ops.__all__:
        obj = getattr(ops, name)
        if inspect.isfunction(obj) or name in schedules:
            doc = obj.__doc__ or ""
            assert ">>>" in doc, f"gradwise.ops.{name} has no runnable example"


_BLOCKER = """
import importlib.abc, importlib.machinery, sys

class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError("gradwise imported optional package " + spec.name)

    def exec_module(self, module):
        pass

class _Block:
    # a probe (importlib.util.find_spec, as torch._dynamo does) finds a spec; importing it fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None

sys.meta_path.insert(0, _Block())
"""


def test_import_imports_no_optional_dependency():
    """A meta-path hook makes importing an optional package fail loudly, so the test fails
    even where those packages are not installed."""
    code = (
        f"BLOCKED = {OPTIONAL!r}\n"
        + _BLOCKER
        + textwrap.dedent(
            """
        import gradwise, gradwise.ops, gradwise.errors, gradwise.testing, gradwise.cluster
        import gradwise.per_sample, gradwise.doctor, gradwise.cli
        import sys
        loaded = [m for m in BLOCKED if m in sys.modules]
        assert not loaded, loaded
        integrations = [m for m in sys.modules if m.startswith("gradwise.integrations")]
        assert not integrations, integrations
        print("ok")
        """
        )
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_import_check_would_catch_an_optional_import():
    code = "BLOCKED = ['sklearn']\n" + _BLOCKER + "import importlib.util\nassert importlib.util.find_spec('sklearn')\n"
    code += "import sklearn\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "gradwise imported optional package sklearn" in out.stderr


def test_error_hierarchy():
    for cls in (
        gradwise.errors.ArgumentError,
        gradwise.errors.ArgumentTypeError,
        gradwise.errors.UnsupportedError,
        gradwise.errors.MissingDependencyError,
    ):
        assert issubclass(cls, gradwise.GradwiseError)
    assert issubclass(gradwise.errors.ArgumentError, ValueError)
    assert issubclass(gradwise.errors.ArgumentTypeError, TypeError)
    assert issubclass(gradwise.errors.MissingDependencyError, ImportError)


def test_missing_optional_dependency_message():
    from gradwise import _optional

    with pytest.raises(gradwise.errors.MissingDependencyError, match=r"pip install 'gradwise\[viz\]'"):
        _optional.EXTRAS["gradwise_no_such_module"] = "viz"
        try:
            _optional.require("gradwise_no_such_module", purpose="plotting")
        finally:
            del _optional.EXTRAS["gradwise_no_such_module"]


def test_cli_version_and_estimators():
    out = subprocess.run([sys.executable, "-m", "gradwise", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"gradwise {gradwise.__version__}"
    out = subprocess.run([sys.executable, "-m", "gradwise", "estimators"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines()]
    assert tuple(listed) == gradwise.ops.ESTIMATORS


def test_cli_without_command_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "gradwise"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "usage: gradwise" in out.stderr


def test_ruff_finds_nothing():
    """The lint rules of pyproject.toml (among them ISC, implicit string concatenation) hold."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "gradwise", "tests", "examples", "benchmarks"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
