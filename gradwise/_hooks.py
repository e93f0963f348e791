"""One owner of the global hooks, patches and modes an instrumenting tool installs, and of
the pause ("quiet") protocol.

:class:`Instrumentation` installs module forward hooks, optimizer step hooks, a patch of
``Optimizer.__init__`` and a TorchFunctionMode, and removes every one of them on
:meth:`~Instrumentation.close`, in reverse order, also after an exception. Each callback
runs only while the instrumentation is active and not quiet, and never breaks the user's
program: an exception inside a callback is passed to ``on_fault`` (which counts it) and
swallowed. The quiet protocol is a counter, so nested :meth:`~Instrumentation.quiet`
blocks (a hook that runs code that would trigger hooks) are safe; it is always entered and
left within one ``with`` block, never across two callbacks, so an exception cannot leave
the instrumentation silenced.

Example:
    >>> seen = []
    >>> inst = Instrumentation(on_fault=print)
    >>> inst.module_forward_pre(lambda module, args: seen.append(type(module).__name__))
    >>> _ = torch.nn.Linear(2, 2)(torch.randn(1, 2))
    >>> inst.close()
    >>> _ = torch.nn.Linear(2, 2)(torch.randn(1, 2))
    >>> seen
    ['Linear']
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.modules import module as _module_hooks
from torch.optim import optimizer as _optimizer_hooks

__all__ = ["Instrumentation"]


class Instrumentation:
    """Global hooks, patches and modes, removed together.

    Args:
        on_fault: called with ``(where, exception)`` when a callback raises.
    """

    def __init__(self, on_fault: Callable[[str, BaseException], None]):
        self._on_fault = on_fault
        self._undo: list[Callable[[], None]] = []
        self._quiet = 0
        self._enabled = True
        self.closed = False

    # --- the quiet protocol ------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether callbacks run now (installed, enabled, not quiet)."""
        return self._enabled and not self._quiet and not self.closed

    def disable(self) -> None:
        """Callbacks do nothing from now on (the hooks stay installed until :meth:`close`)."""
        self._enabled = False

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Callbacks do nothing inside this block (for the tool's own work and for library code)."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def fault(self, where: str, exc: BaseException) -> None:
        """Report an internal fault (never raises)."""
        try:
            self._on_fault(where, exc)
        except Exception:  # reporting a fault must not be a fault
            pass

    def _guarded(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def callback(*args: Any, **kwargs: Any) -> Any:
            # torch.compile traces global hooks into its graph: there they do nothing
            if not self.active or torch.compiler.is_compiling():
                return None
            try:
                with self.quiet():
                    return fn(*args, **kwargs)
            except Exception as exc:
                self.fault(where, exc)
                return None

        return callback

    # --- installing --------------------------------------------------------------------

    def module_forward_pre(self, fn: Callable[[torch.nn.Module, tuple], None]) -> None:
        """``fn(module, args)`` before every module's forward."""
        handle = _module_hooks.register_module_forward_pre_hook(self._guarded("module forward pre-hook", fn))
        self._undo.append(handle.remove)

    def module_forward(self, fn: Callable[[torch.nn.Module, tuple, Any], None]) -> None:
        """``fn(module, args, output)`` after every module's forward, also when it raises."""
        handle = _module_hooks.register_module_forward_hook(self._guarded("module forward hook", fn), always_call=True)
        self._undo.append(handle.remove)

    def optimizer_step_pre(self, fn: Callable[[Any, tuple, dict], Any]) -> None:
        """``fn(optimizer, args, kwargs)`` before every ``optimizer.step()``; it may return
        ``(args, kwargs)`` to replace the step's arguments (``args[0]`` is the optimizer)."""
        handle = _optimizer_hooks.register_optimizer_step_pre_hook(self._guarded("optimizer step pre-hook", fn))
        self._undo.append(handle.remove)

    def optimizer_step_post(self, fn: Callable[[Any, tuple, dict], None]) -> None:
        """``fn(optimizer, args, kwargs)`` after every ``optimizer.step()`` that returns."""
        handle = _optimizer_hooks.register_optimizer_step_post_hook(self._guarded("optimizer step post-hook", fn))
        self._undo.append(handle.remove)

    def module_hook(self, module: torch.nn.Module, fn: Callable[..., None], *, pre: bool = False) -> None:
        """``fn(module, args, output)`` after ``module``'s own forward (``pre``: ``fn(module,
        args, kwargs)`` before it), for one module rather than all of them; removed on close."""
        guarded = self._guarded("module pre-hook" if pre else "module hook", fn)
        if pre:
            handle = module.register_forward_pre_hook(guarded, with_kwargs=True)
        else:
            handle = module.register_forward_hook(guarded)
        self._undo.append(handle.remove)

    def step_post_hook(self, optimizer: Any, fn: Callable[[Any, tuple, dict], None]) -> None:
        """``fn(optimizer, args, kwargs)`` after this optimizer's ``step()``: its own hook, run
        before the global ones (so ``fn`` may install global hooks); removed on close."""
        handle = optimizer.register_step_post_hook(self._guarded("optimizer step post-hook", fn))
        self._undo.append(handle.remove)

    def optimizer_created(self, fn: Callable[[Any], None]) -> None:
        """``fn(optimizer)`` after every ``torch.optim.Optimizer.__init__`` (run quietly)."""
        original = torch.optim.Optimizer.__init__
        after = self._guarded("optimizer construction hook", fn)
        inst = self

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with inst.quiet():
                original(self, *args, **kwargs)
            after(self)

        torch.optim.Optimizer.__init__ = __init__  # type: ignore[method-assign]

        def undo() -> None:
            torch.optim.Optimizer.__init__ = original  # type: ignore[method-assign]

        self._undo.append(undo)

    def wrap(self, owner: Any, name: str, after: Callable[..., None]) -> None:
        """Replace ``owner.name`` by a function that calls the original and then
        ``after(result, *args, **kwargs)`` (guarded); restored on close. For torch functions
        a TorchFunctionMode does not see (``torch.from_numpy``)."""
        original = getattr(owner, name)
        guarded = self._guarded(f"{name} wrapper", after)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            guarded(result, *args, **kwargs)
            return result

        setattr(owner, name, wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def wrap_before(self, owner: Any, name: str, before: Callable[..., None]) -> None:
        """Replace ``owner.name`` by a function that calls ``before(*args, **kwargs)`` (guarded)
        and then the original; restored on close. An iterator passed as the first argument (a
        generator of parameters) is turned into a list first, so that both can read it."""
        original = getattr(owner, name)
        guarded = self._guarded(f"{name} wrapper", before)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], Iterator) and self.active:
                args = (list(args[0]), *args[1:])
            guarded(*args, **kwargs)
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)
        self._undo.append(lambda: setattr(owner, name, original))

    def ignore_warning(self, message: str, category: type[Warning] = UserWarning) -> None:
        """Ignore a warning that exists only because of this instrumentation (torch warns about
        global module hooks under torch.compile); the filter is removed on close, and nothing
        else in the warning filters is touched."""
        warnings.filterwarnings("ignore", message=message, category=category)
        entry = warnings.filters[0]

        def undo() -> None:
            with contextlib.suppress(ValueError):
                warnings.filters.remove(entry)
            mutated = getattr(warnings, "_filters_mutated", None)  # invalidates the per-module caches
            if mutated is not None:
                mutated()

        self._undo.append(undo)

    def enter(self, context: contextlib.AbstractContextManager) -> None:
        """Enter a context manager (a TorchFunctionMode) now and exit it on close."""
        context.__enter__()
        self._undo.append(lambda: context.__exit__(None, None, None))

    def close(self) -> None:
        """Remove everything, last installed first; idempotent."""
        self.closed = True
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                self.fault("removing instrumentation", exc)

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
