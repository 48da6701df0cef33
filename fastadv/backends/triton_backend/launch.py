"""How a Triton kernel of this backend is launched, decided at each launch: compiled through
torch.library.wrap_triton (so torch.compile and opcheck trace it) or, under TRITON_INTERPRET=1
(read when a kernel launches, not at import, so the variable may be set after fastadv is
imported), run by Triton's interpreter on CPU tensors. The kernels are made with `_jit` (always
the compiler's JITFunction); `_wrap(kernel)` gives the launcher the mode calls for."""

import functools
import sys
import types

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def interpreting() -> bool:
    """Whether the kernels run in Triton's interpreter (TRITON_INTERPRET, as Triton reads it), now."""
    return bool(triton.knobs.runtime.interpret)


def _jit(fn):
    """@triton.jit, whatever TRITON_INTERPRET says at import: triton.jit makes an interpreted
    function when it is set, this always the compiler's JITFunction, from which _interpreted
    derives the interpreter's form when a launch finds the variable set."""
    return JITFunction(fn)


class _InterpretedLanguage:
    """triton.language as the interpreter's kernels see it: its @jit functions (tl.sum) made by
    triton.jit when Triton was imported, so compiled ones unless TRITON_INTERPRET was set then,
    interpreted; every other name looked up in triton.language when it is used (the interpreter
    patches the builtins there while a kernel runs). The converse cannot be done: with
    TRITON_INTERPRET set when Triton is imported, its library is interpreted only, and the GPU
    needs the variable unset then."""

    def __init__(self):
        self._functions = {}

    def __getattr__(self, name):
        value = getattr(tl, name)
        if not isinstance(value, JITFunction):
            return value
        if name not in self._functions:
            self._functions[name] = InterpretedFunction(value.fn)
        return self._functions[name]


def _jit_function(value):
    """The JITFunction of a @triton.jit function (or of an autotuned one), else None."""
    fn = value.fn if isinstance(value, Autotuner) else value
    return fn if isinstance(fn, JITFunction) else None


@functools.cache
def _interpreted(module: str) -> dict:
    """The namespace of the kernels of `module` as the interpreter runs them: that module's names,
    and those of the modules its @triton.jit helpers come from (step_math), with each @triton.jit
    function (and the autotuned one's) replaced by an InterpretedFunction of a copy bound to this
    namespace, since the kernels call their helpers by global name and a JITFunction cannot be
    called outside a compiled kernel; `tl` the language with its own @jit functions interpreted.
    The interpreter also adds its own names here, not to the modules."""
    names = vars(sys.modules[module])
    sources = {fn.fn.__module__ for fn in map(_jit_function, names.values()) if fn is not None} - {module}
    namespace = {}
    for source in [*sorted(sources), module]:  # the kernels' own module last: its names win
        namespace.update(vars(sys.modules[source]))
    # triton.language itself stays too, under another name: the interpreter finds and patches it there
    namespace.update({"tl": _InterpretedLanguage(), "_triton_language": tl})
    for name, value in list(namespace.items()):
        fn = _jit_function(value)
        if fn is not None:
            code = fn.fn
            copy = types.FunctionType(code.__code__, namespace, code.__name__, code.__defaults__, code.__closure__)
            namespace[name] = InterpretedFunction(copy)
    return namespace


def _wrap(kernel):
    """The launcher of `kernel` (kernel[grid](...)) in the mode a launch finds: under
    TRITON_INTERPRET the interpreter's eager form (torch 2.11's wrap_triton refuses an
    interpreted function, torch 2.14's hands it back unwrapped), else
    torch.library.wrap_triton(kernel), so torch.compile and opcheck trace the launch."""
    if interpreting():
        jit = _jit_function(kernel)
        return _interpreted(jit.fn.__module__)[jit.fn.__name__]
    return torch.library.wrap_triton(kernel)
