"""What the doctor may touch while it watches, read from PyTorch and the standard library
themselves: a test compares it before and after a watch to show nothing was left behind."""

from __future__ import annotations

import multiprocessing.process
import warnings

import torch

__all__ = ["global_state"]


def global_state() -> tuple:
    """Global module and optimizer hooks, the patched functions, the TorchFunctionMode stack
    and the warning filters."""
    from torch.nn.modules import module as m
    from torch.optim import optimizer as o

    return (
        *(
            dict(getattr(m, name))
            for name in (
                "_global_forward_pre_hooks",
                "_global_forward_hooks",
                "_global_forward_hooks_always_called",
                "_global_backward_hooks",
                "_global_backward_pre_hooks",
            )
        ),
        dict(o._global_optimizer_pre_hooks),
        dict(o._global_optimizer_post_hooks),
        torch.optim.Optimizer.__init__,
        torch.from_numpy,
        torch.amp.GradScaler.scale,
        torch.nn.Module.__init__,
        torch.nn.Module.train,
        torch.nn.Module.zero_grad,
        torch.optim.Optimizer.zero_grad,
        torch.amp.GradScaler.unscale_,
        torch.autograd.backward,
        torch.Tensor.backward,
        torch.nn.utils.clip_grad_norm_,
        torch.nn.utils.clip_grad_value_,
        torch.nn.utils.clip_grad.clip_grad_norm_,
        torch.nn.utils.clip_grad.clip_grad_value_,
        multiprocessing.process.BaseProcess.start,
        torch._C._len_torch_function_stack(),
        list(warnings.filters),
    )
