"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md:python-block-{index}", "exec"), {"__name__": "readme"})


def test_readme_quotes_real_error_messages():
    import torch

    import gradwise as gw

    with pytest.raises(gw.GradwiseError) as info:
        gw.ops.gumbel_softmax(torch.zeros(3), tau=0.0)
    assert str(info.value) in README.read_text()
