"""What the fused step relies on beyond torch's public API, behind one check of the torch version.

On the torch it was written and measured against (:data:`TESTED_TORCH`), the fused kernels (1) drop the guards that
their key already pins, (2) compile under four adjustments to inductor's CPU code generation: kernels mixing float32
with a 16-bit float type are vectorised at the 16-bit width, float32 arctan takes Sleef's faster variant, an 8-bit
buffer's block maximum and encoding share one loop over blocks (outer-loop fusion), and the generated C++ is rewritten
to read scalars and do arithmetic on them once and to clamp in fewer instructions (:mod:`.rewrite`), and (3) where no
guard is left, call inductor's compiled graph without dynamo's frame or AOT autograd's wrappers, reading its inputs by
the source expressions dynamo records (:func:`compile_kernel`, through torch's private inductor wrapper). Each reaches
into inductor's or dynamo's internals. On any other torch (or with ``OPTARENA_FUSED_COMPAT=1``) none of them is used:
dynamo keeps all its guards and inductor generates its own code, so a newer torch makes the fused step slower, never
wrong. The tests run the fused path both ways.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import rewrite

#: The torch release whose internals the adjustments were written for.
TESTED_TORCH = "2.13."


def adjusted() -> bool:
    """Whether this process uses the adjustments: on the tested torch, unless ``OPTARENA_FUSED_COMPAT=1``."""
    return torch.__version__.startswith(TESTED_TORCH) and os.environ.get("OPTARENA_FUSED_COMPAT", "") != "1"


def guard_filter(kind: str) -> Any:
    """The ``guard_filter_fn`` of a kernel: ``"none"`` (flat kernels: the key pins every input's kind, and the
    stand-ins specialise no size) or ``"shapes"`` (kernels with real shapes keep only the guards on shapes); None
    keeps dynamo's own guards."""
    if not adjusted():
        return None
    return torch.compiler.skip_all_guards_unsafe if kind == "none" else shape_guards_only


#: The guards a kernel with real shapes keeps: on its tensors (dtype, device, static sizes, strides), on the
#: relations between their sizes and on its lists' lengths. A shape it was not compiled for must still fail them.
#: The others (constants, closures, globals, global modes) are pinned by the kernel's key; checked on every call
#: they cost ~5 % of Adafactor's YOLOv8n step.
SHAPE_GUARDS = frozenset({"TENSOR_MATCH", "SHAPE_ENV", "SEQUENCE_LENGTH", "DUPLICATE_INPUT"})


def shape_guards_only(guards: list[Any]) -> list[bool]:
    return [guard.guard_type in SHAPE_GUARDS for guard in guards]


def compile_kernel(body: Callable[..., Any], options: dict[str, Any], guard_filter: Any,
                   on_graph: Callable[[Callable[..., Any] | None], None] | None = None) -> Callable[..., Any]:
    """``torch.compile`` of a kernel's ``body`` by inductor with ``options``. With ``on_graph`` (on the adjusted torch
    only), the compiled graph is also handed to it, when the body compiles, as a function of the body's own
    arguments (:func:`direct_call`), or None if the body compiles a second time (then only dynamo knows which graph
    fits). For a kernel whose guards are all dropped, dynamo's work per call is then only to take the tensors out of
    the argument lists: calling the graph directly saves ~15–22 µs per call, and past AOT autograd's wrappers
    17–48 µs more (benchmarks/NOTES.md, "calling the graph directly")."""
    # an option of torch.compile's own, not inductor's
    guards = {} if guard_filter is None else {"guard_filter_fn": guard_filter}
    if on_graph is None or not adjusted():
        return torch.compile(body, fullgraph=True, dynamic=True, options={**options, **guards})
    inductor = torch._TorchCompileInductorWrapper(None, options, True)
    compiled_graphs = 0

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Any:
        nonlocal compiled_graphs
        compiled = inductor(gm, example_inputs, **kwargs)
        compiled_graphs += 1
        try:
            direct = direct_call(body, gm, compiled) if compiled_graphs == 1 else None
        except Exception:  # noqa: BLE001 - dynamo's metadata changed shape: its own call still works
            direct = None
        on_graph(direct)
        return compiled

    return torch.compile(body, backend=backend, fullgraph=True, dynamic=True, options=guards)


def direct_call(body: Callable[..., Any], gm: torch.fx.GraphModule, compiled: Callable[..., Any]
                ) -> Callable[..., Any] | None:
    """``compiled`` (dynamo's graph ``gm`` of ``body``, compiled) as a function of ``body``'s arguments: each graph
    input is read from them by the expression dynamo recorded as its source (``L['params'][0]``,
    ``L['params'][0].size()[0]``), and inductor's graph inside ``compiled`` is called on them where it is found.
    None if an input comes from elsewhere (a global, a constant)."""
    expressions = []
    for node in gm.graph.find_nodes(op="placeholder"):
        source = getattr(node.meta.get("grapharg"), "source", None)
        name = getattr(source, "name", None)
        name = name() if callable(name) else name
        if not isinstance(name, str) or not name.startswith("L["):
            return None
        expressions.append(re.sub(r"L\['(\w+)'\]", r"\1", name))
    parameters = inspect.signature(body).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    header = ", ".join(f"{p.name}=defaults[{p.name!r}]" if p.name in defaults else p.name for p in parameters)
    try:
        inputs = eval(f"lambda {header}: [{', '.join(expressions)}]", {"defaults": defaults})
    except SyntaxError:
        return None
    graph = inductor_graph(compiled)
    if graph is None:
        return lambda *args: compiled(*inputs(*args))
    mutated = sorted(graph.mutated_input_idxs)

    def call(*args: Any) -> Any:
        flat = inputs(*args)
        written = [flat[i] for i in mutated]
        outputs = graph(flat)  # it empties flat
        torch.autograd.graph.increment_version(written)  # as AOT autograd's wrapper does for in-place updates
        return outputs

    call.graph = graph  # type: ignore[attr-defined]  # what it calls (tests check that it is inductor's graph)
    return call


def inductor_graph(compiled: Callable[..., Any]) -> Any:
    """Inductor's graph (``CompiledFxGraph``, called on a list of the graph inputs) inside the wrappers that AOT
    autograd put around it, or None if there is none to find. Calling it past the wrappers saves 17–48 µs a call, the
    more the larger the kernel's tensors (the wrappers' Python runs from caches that the kernel flushed; benchmarks/
    NOTES.md, "calling the graph directly"); a kernel adopts it only once it computed what dynamo's call did."""
    from torch._inductor.output_code import CompiledFxGraph

    seen: set[int] = set()
    todo: list[Any] = [compiled]
    while todo:
        fn = todo.pop()
        if isinstance(fn, CompiledFxGraph):
            return fn
        if id(fn) in seen or len(seen) > 64:
            continue
        seen.add(id(fn))
        todo += [cell.cell_contents for cell in getattr(fn, "__closure__", None) or () if callable(cell.cell_contents)]
        inner = getattr(fn, "compiled_fn", None)
        if inner is not None:
            todo.append(inner)
    return None


def inductor_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` less those this torch's inductor does not know (a renamed option must not fail a compile)."""
    from torch._inductor import config

    def known(name: str) -> bool:
        node: Any = config
        for part in name.split("."):
            if not hasattr(node, part):
                return False
            node = getattr(node, part)
        return True

    return {name: value for name, value in options.items() if known(name)}


@functools.cache
def cache_key(sizes: str) -> Any:
    """A post-grad pass that changes nothing; inductor puts its ``uuid`` into the key of its on-disk cache, so that
    kernels generated with and without the adjustments never stand in for each other, nor kernels first compiled on
    other ``sizes``: inductor decides from the size hints which loops run in parallel, yet keys its cache on the
    symbolic graph alone (Lion's kernel for a 64K-element tensor, compiled after the one for a pack of small tensors,
    had no parallel loop). (Made on first use: it imports inductor, which only the fused path needs.)"""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class CacheKey(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            pass

        def uuid(self) -> str:
            from torch._inductor import cpu_vec_isa

            # the rewrites' own source too: an edit to them must not reuse kernels rewritten the old way; and the
            # vector ISA, which inductor's key leaves out (with ATEN_CPU_CAPABILITY=avx2 after an AVX-512 compile, a
            # kernel with AVX-512 intrinsics came back and failed to build)
            rewrites = hashlib.sha256(Path(rewrite.__file__).read_bytes()).hexdigest()[:16]
            return ("optarena: low-precision tiling, fast float32 arctan, outer-loop fusion, rewritten kernels "
                    f"{rewrites}; version 6; adjusted={adjusted()}; compiled on {sizes}; "
                    f"isa={cpu_vec_isa.pick_vec_isa()}")

    return CacheKey()


@contextlib.contextmanager
def adjusted_codegen() -> Iterator[None]:
    """The code-generation adjustments while a fused kernel compiles (none off the tested torch)."""
    if not adjusted():
        yield
        return
    with low_precision_tiling(), fast_arctan(), outer_loop_fusion(), rewritten_kernels():
        yield


@contextlib.contextmanager
def rewritten_kernels() -> Iterator[None]:
    """While compiling, pass each CPU kernel's C++ source through :func:`rewrite.rewrite` (the intrinsics of its
    rewrites on x86 with AVX2 or AVX-512 only)."""
    try:
        from torch._inductor.codegen import cpp

        original = cpp.CppScheduling.define_kernel
        isa = cpp.cpu_vec_isa.pick_vec_isa()
        x86 = isinstance(isa, (cpp.cpu_vec_isa.VecAVX2, cpp.cpu_vec_isa.VecAVX512))
    except (ImportError, AttributeError):
        yield
        return
    if getattr(original, "rewrites", False):  # already inside one: rewriting twice finds nothing new
        yield
        return
    vector_bits = isa.bit_width() if x86 else 0

    def define_kernel(self: Any, src_code: str, *args: Any, **kwargs: Any) -> Any:
        return original(self, rewrite.rewrite(src_code, vector_bits), *args, **kwargs)

    define_kernel.rewrites = True  # type: ignore[attr-defined]
    cpp.CppScheduling.define_kernel = define_kernel
    try:
        yield
    finally:
        cpp.CppScheduling.define_kernel = original


@contextlib.contextmanager
def fast_arctan() -> Iterator[None]:
    """Vectorised float32 arctan with Sleef's 3.5-ulp variant instead of inductor's 1-ulp one, on AVX-512.

    RLion's arctan made its step compute-bound (benchmarks/NOTES.md, "fast arctan"); the two variants differ by at
    most 2.4e-7 relative, far below what a step of lr·arctan/(π/2) can resolve. Other dtypes and instruction sets
    keep inductor's code.
    """
    try:
        from torch._inductor.codegen import cpp
        from torch._inductor.virtualized import V

        original = cpp.CppVecOverrides.__dict__["atan"]
        avx512 = cpp.cpu_vec_isa.pick_vec_isa().bit_width() == 512
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def atan(x: Any) -> str:
        if not avx512 or getattr(x, "dtype", None) != torch.float32:
            return original.__func__(x)
        vectors = V.kernel._get_num_vectors(torch.float32)
        if vectors == 1:
            return f"at::vec::Vectorized<float>(Sleef_atanf16_u35({x}))"
        # a VectorizedN<float, n> (the 16-bit width of a mixed kernel): each of its vectors
        return (f"[&]() {{ auto r = {x}; for (int i = 0; i < {vectors}; i++) "
                f"r[i] = at::vec::Vectorized<float>(Sleef_atanf16_u35(r[i])); return r; }}()")

    cpp.CppVecOverrides.atan = staticmethod(atan)
    try:
        yield
    finally:
        cpp.CppVecOverrides.atan = original


@contextlib.contextmanager
def low_precision_tiling() -> Iterator[None]:
    """While compiling, vectorise a CPU kernel that mixes float32 with one 16-bit float type by the 16-bit type's
    width in all of its loops (32 lanes with AVX-512).

    Inductor does so only where every loop of the kernel touches the 16-bit type, and a fused step's loop that copies
    float32 parameters back does not: the whole kernel then ran 16 lanes wide and moved its bf16 state by half-width
    masked loads and stores, which cost more than the bytes they save (benchmarks/NOTES.md, "bf16 tiling"). The
    width only changes how the loops are vectorised, not what they compute.
    """
    try:
        from torch._inductor.codegen import cpp

        original = cpp.TilingSelect.select_tiling
        find_low_precision = cpp.get_loop_body_lowp_fp
        loop_bodies = cpp._get_loop_body
    except (ImportError, AttributeError):
        yield
        return

    def select_tiling(self: Any, fn_list: Any, var_sizes_list: Any) -> Any:
        found = {find_low_precision(body)[0] for body in loop_bodies(fn_list)} - {None}
        if len(found) != 1:
            return original(self, fn_list, var_sizes_list)
        (dtype,) = found

        # inductor picks the 16-bit width only if every loop reports that type; the float32-only loops report none
        def as_low_precision(body: Any) -> tuple[torch.dtype, bool]:
            own, all_low_precision = find_low_precision(body)
            return own or dtype, all_low_precision

        cpp.get_loop_body_lowp_fp = as_low_precision
        try:
            return original(self, fn_list, var_sizes_list)
        finally:
            cpp.get_loop_body_lowp_fp = find_low_precision

    cpp.TilingSelect.select_tiling = select_tiling
    try:
        yield
    finally:
        cpp.TilingSelect.select_tiling = original


@contextlib.contextmanager
def outer_loop_fusion() -> Iterator[None]:
    """While compiling, let inductor's CPU outer-loop fusion put an 8-bit buffer's block maximum and its encoding
    into one loop over blocks (both inner loops per block, its data still in L1), two fixes to torch 2.13's:

    - a fused node keeps ordering-only ("weak") dependencies between its own members, and the vertical-fusion check
      reads them as nodes between the reduction and its consumers ("intermediate nodes"); they are left out of that
      check (the members stay in order inside the node);
    - the local-buffer analysis (which keeps a value that both inner loops use in a per-block buffer instead of a
      full-size one) counts a user by ordering only (the kernel writing the codes after the parameter update read
      them) as a reader and asks it for a read index it does not have (``KeyError``); such users are left out of
      that analysis (they read nothing, and inside one kernel the order holds).

    Measured: benchmarks/NOTES.md, "8-bit state".
    """
    try:
        from torch._inductor import scheduler
        from torch._inductor.codegen import cpp

        can_fuse_vertical = scheduler.Scheduler.can_fuse_vertical
        codegen_outer_loop_node = cpp.CppScheduling.codegen_outer_loop_node
    except (ImportError, AttributeError):
        yield
        return

    def without_own_weak_deps(self: Any, node1: Any, node2: Any, **kwargs: Any) -> bool:
        own = node2.get_buffer_names()
        inner = {dep for dep in node2.unmet_dependencies if isinstance(dep, scheduler.WeakDep) and dep.name in own}
        if not inner:
            return can_fuse_vertical(self, node1, node2, **kwargs)
        unmet = node2.unmet_dependencies
        node2.unmet_dependencies = unmet - inner
        try:
            return can_fuse_vertical(self, node1, node2, **kwargs)
        finally:
            node2.unmet_dependencies = unmet

    def without_weak_users(self: Any, node: Any) -> Any:
        members = node.get_nodes()
        hidden = []
        for member in members:
            for buffer in member.get_outputs():
                weak = [user for user in buffer.users if user.is_weak and user.node in members]
                if weak:
                    hidden.append((buffer, buffer.users))
                    buffer.users = [user for user in buffer.users if user not in weak]
        try:
            return codegen_outer_loop_node(self, node)
        finally:
            for buffer, users in hidden:
                buffer.users = users

    scheduler.Scheduler.can_fuse_vertical = without_own_weak_deps
    cpp.CppScheduling.codegen_outer_loop_node = without_weak_users
    try:
        yield
    finally:
        scheduler.Scheduler.can_fuse_vertical = can_fuse_vertical
        cpp.CppScheduling.codegen_outer_loop_node = codegen_outer_loop_node
