"""What a process's Python stacks say it is doing, and whether that confirms the counters' cause.

Pure: from a StackProfile to the share of each thread's time per activity, and from a Finding and
that reading to a Finding. Counters tell that a thread is busy or the GPU waits; the stack tells on
what: a main thread that spends most samples in the model's forward is launching kernels, not
preparing input, whatever its CPU share says.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from flopwatch.judge.diagnose import ADVICE, PHASES, SUMMARY
from flopwatch.judge.regime import GpuTick
from flopwatch.model import Finding, StackProfile, StackShare

ACTIVITIES = {
    "data_loading": "data loading",
    "tokenizing": "tokenizing",
    "loader_wait": "waiting on the data loader",
    "file_read": "file reads",
    "gpu_sync": "waiting on the GPU (sync)",
    "model": "model code launching kernels",
    "server_wait": "a server's event loop, waiting for requests",
    "notebook_wait": "a notebook kernel, waiting for input",
    "waiting": "waiting",
    "other": "other code",
    # A phase of a job's life: whatever the innermost frame does, the frames around it say why.
    "starting": "starting up (imports, CUDA initialization)",
    "loading_weights": "loading weights",
    "compiling": "compiling the model",
    "checkpointing": "saving a checkpoint",
    "evaluating": "an evaluation loop",
    "exiting": "exiting (atexit handlers, interpreter finalization)",
}

# Causes on the host's side of the GPU: the culprit's Python stacks can say what it does instead.
# Under the others (the GPU's own work, its sharing, the collectives) they show whose code the
# finding is about, and judge nothing.
HOST_SIDE = frozenset({"input_starved", "launch_bound", "io_bound", "host_transfer_bound", "held_idle",
                       "low_demand", "unknown", *PHASES})
FEEDING = ("data_loading", "tokenizing", "loader_wait")
STRONG = 0.5  # a thread spending at least this share of its samples in one activity
# The thread that launches the model prepares its input for at least this share of its samples:
# for that long no new kernel is enqueued and the GPU drains.
FEEDING_SHARE = 0.25
# A sample less than this share of whose time the GPU was under the threshold speaks for the busy part.
QUIET_SHARE = 0.25
# A sample whose main thread is this share in a backward pass or optimizer step shows a job training.
TRAINING_SEEN = 0.1
# A phase named by the last sample goes on while a thread spends this share in it and the GPU still
# waits: a phase's end is spread over threads (a compiled model's backward is compiled on autograd's
# own thread while the main thread waits in backward), so the sample over it shows little of it.
PHASE_GOING_ON = 0.1

_WAIT, _EVENT_LOOP = "wait", "event_loop"  # a blocking frame: its callers say what it waits for
_STDLIB_MARKERS = ("/site-packages/", "/dist-packages/", "/lib/python3")

# (substring of the path, activity), tried in order on each frame's path.
_PATHS = (
    ("/ipykernel/", "notebook_wait"),
    ("tokenizers/", "tokenizing"),
    ("/tokenization_", "tokenizing"),
    ("torch/utils/data/dataloader.py", "loader_wait"),
    ("multiprocessing/connection.py", "loader_wait"),
    ("multiprocessing/queues.py", "loader_wait"),
    ("torch/utils/data/", "data_loading"),
    ("/PIL/", "data_loading"),
    ("/cv2/", "data_loading"),
    ("torchvision/transforms/", "data_loading"),
    ("torchvision/io/", "data_loading"),
    ("/albumentations/", "data_loading"),
    ("torch/cuda/__init__.py", "gpu_sync"),  # synchronize, and little else a loop would sit in
    ("torch/nn/", "model"),
    ("torch/_ops.py", "model"),
    ("torch/autograd/", "model"),
    ("torch/_tensor.py", "model"),
    ("torch/optim/", "model"),
    ("torch/_dynamo/", "model"),
    ("torch/_inductor/", "model"),
    ("torch/cuda/graphs.py", "model"),
    ("transformers/models/", "model"),
    ("transformers/generation/", "model"),
    ("/selectors.py", _EVENT_LOOP),
    ("asyncio/base_events.py", _EVENT_LOOP),
    ("/socketserver.py", _EVENT_LOOP),
    ("/uvicorn/", _EVENT_LOOP),
    ("/tornado/", _EVENT_LOOP),
    ("/zmq/", _EVENT_LOOP),
    ("/threading.py", _WAIT),
    ("/queue.py", _WAIT),
)
# By the function's own name (the part after the last dot), wherever it is.
_FUNCTIONS = {
    "_next_data": "loader_wait", "_get_data": "loader_wait", "_try_get_data": "loader_wait",
    "encode": "tokenizing", "encode_batch": "tokenizing", "batch_encode_plus": "tokenizing",
    "tokenize": "tokenizing", "_tokenize": "tokenizing",
    "collate": "data_loading", "default_collate": "data_loading", "collate_fn": "data_loading",
    "__getitem__": "data_loading", "__getitems__": "data_loading",
    "forward": "model", "backward": "model", "step": "model",
    "synchronize": "gpu_sync",
    "accept": _EVENT_LOOP, "serve_forever": _EVENT_LOOP, "run_forever": _EVENT_LOOP, "_run_once": _EVENT_LOOP,
}
# What the innermost frame's line calls, when it calls into C (py-spy shows the calling line): by
# the called function's name, or by text where the line is not a whole statement.
_CALLS = (
    (("synchronize", "item", "cpu", "tolist", "numpy"), "gpu_sync"),
    (("read", "readv", "pread", "preadv", "readinto", "readline", "fromfile"), "file_read"),
    (("select", "poll", "accept", "epoll", "epoll_wait"), _EVENT_LOOP),
)


# Phases of a job's life, by a frame anywhere in the stack: (substring of the path or "", function
# names), tried in order. The frames inside (a read, a kernel launch, sympy) are the phase's work.
_PHASE_FRAMES = (
    ("checkpointing", "torch/serialization.py", ("save", "_save")),
    ("checkpointing", "torch/distributed/checkpoint/", ("save", "async_save", "save_state_dict", "_save_state_dict")),
    ("checkpointing", "safetensors/", ("save_file", "save")),
    ("checkpointing", "", ("save_pretrained", "save_model", "_save_checkpoint", "save_checkpoint")),
    ("loading_weights", "torch/serialization.py", ("load", "_load", "_legacy_load")),
    ("loading_weights", "torch/distributed/checkpoint/", ("load", "load_state_dict", "_load_state_dict")),
    ("loading_weights", "safetensors/", ("load_file", "load", "safe_open", "get_tensor")),
    ("loading_weights", "", ("from_pretrained", "load_state_dict", "_load_from_state_dict", "load_checkpoint",
                             "load_checkpoint_in_model", "load_sharded_checkpoint", "_load_pretrained_model")),
    ("compiling", "torch/_dynamo/", ("_compile", "compile_inner", "_convert_frame", "_convert_frame_assert",
                                     "optimize", "_optimize")),
    # torch.compile and Module.compile return at once, but the first call imports the compiler:
    # seconds of a job's compile warm-up that the import frames beneath would call starting up.
    ("compiling", "torch/__init__.py", ("compile",)),
    ("compiling", "torch/nn/modules/module.py", ("compile",)),
    ("compiling", "torch/_inductor/", ("compile_fx", "compile_fx_inner", "fx_codegen_and_compile", "autotune",
                                       "benchmark_example_value", "precompile")),
    # A compiled graph's first call runs under a mode that checks its custom ops' aliasing
    # (AOTAutograd's cold start, never again for that graph): the last step of compiling it.
    ("compiling", "_AnalyzeCustomOpInputOutputMode", ("__torch_dispatch__",)),
    ("compiling", "triton/runtime/autotuner.py", ("_bench", "benchmark", "prune_configs", "run")),
    ("compiling", "tensorrt", ("build_serialized_network", "build_engine")),
    ("compiling", "torch/onnx/", ("export",)),
    ("evaluating", "", ("evaluate", "evaluation_loop", "_evaluation_loop", "validate", "validation_step",
                        "validation_loop", "eval_step", "eval_loop", "evaluate_model", "test_step",
                        "prediction_step", "prediction_loop")),
    # Run only as the interpreter exits (atexit, finalization), or to end a distributed job. A main
    # thread with no Python frame for most of a sample has returned from its script: read_stacks names it so.
    ("exiting", "/threading.py", ("_shutdown",)),
    ("exiting", "concurrent/futures/", ("_python_exit",)),
    ("exiting", "multiprocessing/util.py", ("_exit_function",)),
    ("exiting", "torch/_inductor/", ("shutdown_compile_workers",)),
    ("exiting", "torch/distributed/", ("destroy_process_group",)),
    # Last: an import inside from_pretrained or a compile is part of that phase.
    ("starting", "", ("_find_and_load", "_find_and_load_unlocked")),  # import machinery
    ("starting", "torch/cuda/__init__.py", ("_lazy_init", "init")),
)


# A backward pass or an optimizer step: the thread is training, not running the model forward only.
_TRAINING_FUNCTIONS = ("backward", "_engine_run_backward", "run_backward")
_TRAINING_PATHS = ("torch/optim/",)


def _function(frame: str) -> str:
    """A frame's function's own name: ``Class.method (path:line)`` → ``method``."""
    return frame.split(" (", 1)[0].rsplit(".", 1)[-1]


def _frames(stack: StackShare) -> list[tuple[str, str]]:
    """(frame, its path) from the innermost out; the path is "" where the stack has none."""
    return list(zip(stack.frames, stack.paths or ("",) * len(stack.frames)))


def stack_trains(stack: StackShare) -> bool:
    """Whether a stack is in a backward pass or an optimizer step."""
    return any(_function(frame) in _TRAINING_FUNCTIONS or any(marker in path for marker in _TRAINING_PATHS)
               for frame, path in _frames(stack))


def stack_phase(stack: StackShare) -> str | None:
    """The phase of a job's life a stack is in, by any of its frames, or None."""
    frames = _frames(stack)
    for phase, marker, names in _PHASE_FRAMES:
        for frame, path in frames:
            if marker and marker not in path and marker not in frame:
                continue
            if _function(frame) in names:
                return phase
    return None


def frame_activity(frame: str, path: str, code: str = "") -> str | None:
    """One frame's activity, ``_WAIT``/``_EVENT_LOOP`` for a blocking frame, or None."""
    for marker, activity in _PATHS:
        if marker in path:
            return activity
    name = _function(frame)
    if name in _FUNCTIONS:
        return _FUNCTIONS[name]
    return line_activity(code) if code else None


def line_activity(code: str) -> str | None:
    """What a line of source calls into, the outermost call first: Python evaluates a call's
    arguments before the call, so a thread found on the line for long is in the outer one
    (``os.preadv(fd, [buffer.numpy()], offset)`` waits on the disk, not on the GPU)."""
    for name in _called(code):
        for calls, activity in _CALLS:
            if name in calls:
                return activity
    return None


def _called(code: str) -> list[str]:
    """The names of the functions a line calls, outer calls before those in their arguments; for a
    line that is no whole statement (``for x in loader:``, a call's continuation), each name
    followed by ``(`` in the text, in its order."""
    try:
        tree = ast.parse(code.strip())
    except (SyntaxError, ValueError):  # ValueError: a null byte, on Python 3.10
        return re.findall(r"(\w+)\s*\(", code.split("#", 1)[0])
    names, level = [], [tree]
    while level:  # breadth first: a call before the calls in its arguments
        names += [_callee(node) for node in level if isinstance(node, ast.Call)]
        level = [child for node in level for child in ast.iter_child_nodes(node)]
    return names


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def stack_activity(stack: StackShare) -> str:
    """What a stack's thread is doing: the phase of the job's life its frames say it is in; else its
    innermost frame that says, a blocking frame being named for what its callers wait on (the data
    loader, a server loop, a notebook kernel)."""
    phase = stack_phase(stack)
    if phase is not None:
        return phase
    blocked: str | None = None
    for depth, (frame, path) in enumerate(_frames(stack)):
        activity = frame_activity(frame, path, stack.code if depth == 0 else "")
        if activity is None:
            continue
        if activity in (_WAIT, _EVENT_LOOP):
            # An event loop outranks a plain wait beneath it (queue.get inside a server loop).
            blocked = _EVENT_LOOP if _EVENT_LOOP in (activity, blocked) else _WAIT
            continue
        if blocked is not None and activity not in ("loader_wait", "notebook_wait"):
            break  # a wait inside model or data code: the caller waits, so it is a wait
        return activity
    if blocked == _EVENT_LOOP:
        return "server_wait"
    return "waiting" if blocked else "other"


@dataclass(frozen=True, slots=True)
class StackReading:
    """Shares of samples by activity: the GPU processes' main threads (averaged), their other
    threads (the busiest in each activity), and their children's main threads, the loader
    workers (averaged)."""

    main: Mapping[str, float]
    threads: Mapping[str, float]
    workers: Mapping[str, float]
    training: float = 0.0  # the main threads' share in a backward pass or an optimizer step
    scripts: frozenset[int] = frozenset()  # processes whose main thread was seen running a script

    def strongest(self, part: str) -> tuple[str, float]:
        shares = getattr(self, part)
        return max(shares.items(), key=lambda kv: kv[1], default=("other", 0.0))

    def share(self, part: str, *activities: str) -> float:
        shares = getattr(self, part)
        return sum(shares.get(a, 0.0) for a in activities)


def _runs_script(stack: StackShare) -> bool:
    """Whether a main thread's stack is a Python program's (``python train.py``, ``-m``, ``-c``, a
    console script): its outermost frame is a module's top level, not a call from native code."""
    return stack.thread == "MainThread" and bool(stack.frames) and \
        _function(stack.frames[-1]) in ("<module>", "_run_module_as_main")


def read_stacks(profile: StackProfile, ran_script: Iterable[int] = ()) -> StackReading:
    """``ran_script``: processes an earlier sample saw running a script."""
    stacks = profile.sampled or profile.stacks
    scripts = frozenset(s.pid for s in stacks if s.pid in profile.pids and _runs_script(s))
    ran = scripts.union(ran_script)
    # A program's main thread runs Python from its script's start to its end: without a frame for
    # most of a sample it is finalizing. (One that native code calls into, an embedded
    # interpreter's, is native code between calls into Python.) A few samples without one in a
    # running program are reads py-spy made as a frame was pushed or popped (it does not stop the
    # process; 3-9 % of an H100 job's samples while it compiled): not time spent, left out.
    frameless: dict[tuple[int, str], float] = {}
    for stack in stacks:
        if not stack.frames and stack.thread == "MainThread":
            frameless[(stack.pid, stack.thread)] = frameless.get((stack.pid, stack.thread), 0.0) + stack.share
    per_thread: dict[tuple[int, str], dict[str, float]] = {}
    training: dict[int, float] = {}
    for stack in stacks:
        key = (stack.pid, stack.thread)
        torn = frameless.get(key, 0.0)
        torn = torn if torn < STRONG else 0.0
        if torn and not stack.frames:
            continue
        share = stack.share / (1.0 - torn)
        shares = per_thread.setdefault(key, {})
        activity = "exiting" if not stack.frames and stack.thread == "MainThread" and stack.pid in ran \
            else stack_activity(stack)
        shares[activity] = shares.get(activity, 0.0) + share
        if stack.pid in profile.pids and stack.thread == "MainThread" and stack_trains(stack):
            training[stack.pid] = training.get(stack.pid, 0.0) + share
    main, threads, workers = [], [], []
    for (pid, thread), shares in per_thread.items():
        if pid in profile.pids:
            (main if thread == "MainThread" else threads).append(shares)
        elif thread == "MainThread":  # a worker's other threads only ferry its results back
            workers.append(shares)
    return StackReading(main=_mean(main), threads=_max(threads), workers=_mean(workers),
                        training=round(sum(training.values()) / max(len(main), 1), 3), scripts=scripts)


def activities(r: StackReading) -> dict[str, dict[str, float]]:
    """Each part's shares by activity, the larger first, a share under 1 % left out."""
    parts = {part: sorted(getattr(r, part).items(), key=lambda kv: -kv[1]) for part in ("main", "threads", "workers")}
    return {part: {a: round(v, 2) for a, v in shares if v >= 0.01} for part, shares in parts.items() if shares}


def _mean(parts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for p in parts for k in p}
    return {k: round(sum(p.get(k, 0.0) for p in parts) / len(parts), 3) for k in keys}


def _max(parts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for p in parts for k in p}
    return {k: max(p.get(k, 0.0) for p in parts) for k in keys}


@dataclass(frozen=True, slots=True)
class GpuDuring:
    """The GPU while a stack sample was taken."""

    utilization: float  # the SMs' mean share busy
    under_share: float  # the share of the sample's time the GPU was under the threshold

    @property
    def busy(self) -> bool:
        """Taken with the GPU busy nearly throughout: the stacks show what kept it busy, not why it
        waited before."""
        return self.under_share < QUIET_SHARE


def gpu_during(ticks: Iterable[GpuTick], start: float, end: float) -> GpuDuring | None:
    """The ticks' overlap with ``start``–``end`` (a sample's time), weighted by it; None if none."""
    weight = busy = under = 0.0
    for tick in ticks:
        overlap = min(tick.timestamp, end) - max(tick.timestamp - tick.seconds, start)
        if overlap <= 0 or tick.utilization is None:
            continue
        weight += overlap
        busy += overlap * tick.utilization
        under += overlap * tick.under
    return GpuDuring(round(busy / weight, 3), round(under / weight, 3)) if weight > 0 else None


def _who(part: str) -> str:
    return {"main": "main thread", "threads": "a thread", "workers": "loader workers"}[part]


def _said(part: str, activity: str, share: float) -> str:
    return f"{_who(part)} {share:.0%} in {ACTIVITIES[activity]}"


def phase_shown(r: StackReading, under_share: float = 1.0, going_on: str | None = None) -> tuple[str, str] | None:
    """(the phase of a job's life the stacks show, what they show), or None; ``under_share``: the
    share of the sample's time the GPU was under the threshold; ``going_on``: the phase the last
    sample named. A thread moving from one phase to the next shows both: the larger names it."""
    part = _larger(r, *PHASES)
    # A sample that outlasted the stretch under the threshold (a checkpoint over and the steps
    # running again before py-spy was done) holds the phase only in the part the stretch had: it
    # need only fill most of that part, and a sample mostly over busy ticks says too little.
    if r.share(part, *PHASES) >= STRONG * max(under_share, 0.5):
        phase = max(PHASES, key=lambda p: r.share(part, p))
        return phase, f"{_who(part)} {r.share(part, phase):.0%} {ACTIVITIES[phase]}"
    if going_on is not None and r.share(part := _larger(r, going_on), going_on) >= PHASE_GOING_ON:
        return going_on, f"{_who(part)} still {r.share(part, going_on):.0%} {ACTIVITIES[going_on]}"
    return None


def phase_turn(r: StackReading, before: str, after: str) -> float | None:
    """Where in a sample a thread moved from phase ``before`` to ``after``, as a share of the
    sample's time: the share it spent in ``before``, of the two (a thread passes from one phase
    of a job's life to the next, not back); None if the sample shows only one of them."""
    part = _larger(r, after)
    spent_before, spent_after = r.share(part, before), r.share(part, after)
    return spent_before / (spent_before + spent_after) if spent_before > 0 and spent_after > 0 else None


def _larger(r: StackReading, *activities: str) -> str:
    """The part, the main threads or the others, spending more in ``activities``."""
    return "main" if r.share("main", *activities) >= r.share("threads", *activities) else "threads"


def _verdict(cause: str, r: StackReading, during: GpuDuring, trained: bool,
             going_on: str | None = None) -> tuple[str, str] | None:
    """(the cause the stacks support, what they show) for a host-side cause, or None if they say
    nothing strong about it. Each line reads what the frames mean for where the time goes;
    ``during``: the GPU while the sample was taken; ``trained``: an earlier sample of these
    processes showed them training; ``going_on``: the phase the last sample named."""
    if during.busy:
        return None
    utilization = during.utilization
    # Loading, compiling, saving, starting, evaluating: the phase, not the bottleneck it shows on
    # the counters (a read, a busy thread), is what its owner can change.
    shown = phase_shown(r, during.under_share, going_on)
    if shown is not None:
        return shown
    main, share = r.strongest("main")
    feeding_main = r.share("main", *FEEDING)
    feeding_elsewhere = max(r.share("threads", "data_loading", "tokenizing"),
                            r.share("workers", "data_loading", "tokenizing", "file_read"))
    if main == "file_read" and share >= STRONG:
        # The main thread sits in read(): whatever the CPU or memory figures, the GPU waits on storage.
        return "io_bound", _said("main", main, share)
    if main == "server_wait" and share >= STRONG and cause in ("unknown", "held_idle", "low_demand"):
        # A server waiting in accept/epoll holds its model by design: demand is low, it is not stale.
        return "low_demand", _said("main", main, share)
    if main == "notebook_wait" and share >= STRONG and cause == "held_idle":
        return "held_idle", _said("main", main, share)
    if feeding_main >= STRONG and cause in ("input_starved", "launch_bound", "unknown"):
        # Preparing input on the thread that should launch the model, or waiting for loaders to.
        return "input_starved", f"main thread {feeding_main:.0%} in data loading, tokenizing or its queue"
    model_main = r.share("main", "model", "gpu_sync")
    # A serial loop (prepare input, then step): the GPU drains while the thread prepares input, but
    # runs kernels while the thread launches them, so launching leaves it idle only for the part of
    # that time its kernels do not fill.
    launch_gaps = max(model_main - utilization, 0.0)
    if feeding_main >= FEEDING_SHARE and feeding_main > launch_gaps and cause in ("input_starved", "launch_bound", "unknown"):
        return "input_starved", (f"main thread {feeding_main:.0%} in data loading or tokenizing, "
                                 f"{model_main:.0%} launching the model while the GPU was busy {utilization:.0%}")
    if feeding_elsewhere >= STRONG and cause in ("input_starved", "unknown") and r.share("main", "model") < STRONG:
        part = "threads" if r.share("threads", "data_loading", "tokenizing") >= STRONG else "workers"
        activity, value = r.strongest(part)
        return "input_starved", _said(part, activity, value)
    waiting = ("input_starved", "launch_bound", "unknown", "io_bound")
    if model_main >= STRONG and feeding_elsewhere < STRONG:
        if trained and r.training == 0.0 and cause in (*waiting, "host_transfer_bound"):
            # A training job that runs its model forward only, with no backward pass or optimizer
            # step in the sample, is in its evaluation loop, whatever the loop is called, and
            # whichever wait the counters' window saw in it (a checkpoint's copies before it, still
            # in the window, read host_transfer_bound): a phase, as above.
            return "evaluating", f"main thread {model_main:.0%} in the model's forward only, in a job seen training"
        if cause in waiting:
            # The busy thread is the model's own loop: launches (or syncs) too small to fill the
            # GPU. Storage traffic beside it (a checkpoint's writeback) is not what the GPU waits for.
            return "launch_bound", f"main thread {model_main:.0%} in model code or GPU syncs"
    if cause == "io_bound" and r.share("workers", "file_read") >= STRONG:
        return "io_bound", _said("workers", "file_read", r.share("workers", "file_read"))
    return None


def corroborate(finding: Finding | None, profile: StackProfile | None, reading: StackReading | None = None,
                trained: bool = False, during: GpuDuring | None = None, going_on: str | None = None) -> Finding | None:
    """The finding with its stacks attached, its cause confirmed (higher confidence) or corrected
    where the stacks speak strongly; ``reading`` is read_stacks(profile), if already made;
    ``trained``: an earlier sample of the profile's processes showed them training; ``during``:
    the GPU while the sample was taken (else the finding's window stands for it); ``going_on``: the
    phase the last sample named, if any."""
    if finding is None or profile is None:
        return finding
    if profile.unavailable or not profile.sampled:
        return replace(finding, stacks=profile)
    if during is None:
        during = GpuDuring(finding.evidence.get("utilization") or 0.0, 1.0)
    reading = reading or read_stacks(profile)
    # Every stack sampled, by activity: the stacks shown are only the top few of each thread.
    evidence = {**finding.evidence, "stack_activities": activities(reading)}
    verdict = _verdict(finding.cause, reading, during, trained, going_on) if finding.cause in HOST_SIDE else None
    if verdict is None:
        return replace(finding, stacks=profile, evidence=evidence)
    cause, said = verdict
    if cause == finding.cause:
        return replace(finding, stacks=profile, confidence=round(min(finding.confidence + 0.15, 0.95), 2),
                       evidence={**evidence, "stacks_agree": said})
    # What contributed beside the counters' cause (sharing, DRAM, clocks) holds beside the stacks' too.
    return Finding(cause=cause, severity="ticket" if cause == "low_demand" or cause in PHASES else "page",
                   confidence=0.75,
                   evidence={**evidence, "stacks_corrected_from": finding.cause, "stacks_say": said},
                   advice=ADVICE[cause], summary=SUMMARY[cause], stacks=profile,
                   contributing=tuple(c for c in finding.contributing if c.cause != cause))


def _user_code(path: str) -> bool:
    return bool(path) and not any(m in path for m in _STDLIB_MARKERS)


def _line(stack: StackShare) -> str:
    frames = _frames(stack)
    if not frames:
        return f"{stack.share * 100:.0f} % with no Python frame"
    shown = [frame for frame, _ in frames[:1]]
    caller = next((f for f, p in frames[1:] if _user_code(p)), frames[1][0] if len(frames) > 1 else None)
    if caller is not None:
        shown.append(caller)
    return f"{stack.share * 100:.0f} % in " + " ← ".join(shown)


def stack_summary(profile: StackProfile | None) -> str | None:
    """One line for people: the main thread's top stack, and a worker's where the main thread
    waits on them (``62 % in encode (prep.py:88) ← collate (train.py:41)``)."""
    if profile is None or not profile.stacks:
        return None
    first = profile.stacks[0]
    text = _line(first)
    worker = next((s for s in profile.stacks if s.pid not in profile.pids and s.thread == "MainThread"), None)
    if worker is not None and first.pid in profile.pids and stack_activity(first) == "loader_wait":
        text += f"; loader worker {_line(worker)}"
    return text
