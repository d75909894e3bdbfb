"""``optarena speed``: time every optimizer and execution path against torch's AdamW on this machine.

One run measures the in-place memory bandwidth (``a += b`` over a large buffer), then, per layout, builds one set of
parameters and gradients shared by every candidate (each keeps its own state), and times the candidates interleaved
round by round so that load from other processes hits all of them alike. Reported per candidate: median ms per
``step()``, effective GB/s from the minimal bytes the algorithm must move per parameter, its share of the measured
bandwidth, measured state bytes per parameter, peak extra memory allocated during one step, and the first step's
compile time; and each candidate that could not be timed, with the reason.

:mod:`.layouts` holds the parameter shapes, :mod:`.candidate` optarena's and torch's candidates, :mod:`.peers`
other libraries', :mod:`.measure` the timing and probes, :mod:`.cli` the command.
"""

from __future__ import annotations

from .candidate import DEFAULT_PATHS, PATHS, Candidate, Unavailable, compile_step, own_candidates, step_bytes
from .cli import add_arguments, candidates, run
from .layouts import LAYOUTS, MODEL_LAYOUTS, QUICK_LAYOUTS, vit_s_shapes, yolov8n_shapes
from .measure import Result, cpu_description, format_table, measure_bandwidth, peak_extra_bytes, run_layout
from .peers import PEERS, peer_candidates

__all__ = ["DEFAULT_PATHS", "LAYOUTS", "MODEL_LAYOUTS", "PATHS", "PEERS", "QUICK_LAYOUTS", "Candidate", "Result",
           "Unavailable", "add_arguments", "candidates", "compile_step", "cpu_description", "format_table",
           "measure_bandwidth", "own_candidates", "peak_extra_bytes", "peer_candidates", "run", "run_layout",
           "step_bytes", "vit_s_shapes", "yolov8n_shapes"]
