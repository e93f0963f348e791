"""Doctest collection of the package: modules of optional integrations need their framework.

Triton's interpreter is chosen when triton is imported (doctest collection imports the
kernel modules): without a GPU, the kernel tests run the kernels on CPU tensors through it.
"""

import importlib.util
import os

import torch

collect_ignore = [] if importlib.util.find_spec("lightning") else ["gradwise/integrations/lightning.py"]

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
