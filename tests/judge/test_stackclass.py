"""Reading Python stacks: what each activity looks like in py-spy's raw output, and how stacks
confirm or correct a cause from the counters.

tests/stacks/*.raw were recorded by py-spy 0.4.3 (`record --nonblocking --idle --threads
--subprocesses --full-filenames --format raw`, 2 s at 20 Hz) from the scripts beside them, with
the interpreter's prefix rewritten to /usr. The PyTorch stacks below are written the same way.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from flopwatch.model import Contribution, Finding, StackProfile
from flopwatch.sources.stacks import parse_raw
from flopwatch.judge.regime import GpuTick
from flopwatch.judge.stackclass import (GpuDuring, StackReading, corroborate, gpu_during, phase_turn, read_stacks,
                                        stack_summary)

STACKS = Path(__file__).resolve().parents[1] / "stacks"
PY = "/usr/lib/python3.11"
SITE = "/usr/lib/python3.11/site-packages"


def recorded(name: str, code: str = "") -> StackProfile:
    text = (STACKS / f"{name}.raw").read_text()
    pid = int(text.split(":", 1)[0].split()[1])
    return parse_raw(text, (pid,), source_line=lambda pid, path, line: code)


def raw(*stacks: tuple[str, int], pid: int = 4242, code: str = "") -> StackProfile:
    """A profile of ``pid``'s main thread from ("frame;frame;…" outermost first, count) pairs."""
    text = "\n".join(f'process {pid}:"python3 train.py";thread ({pid}): MainThread;{frames} {count}'
                     for frames, count in stacks)
    return parse_raw(text, (pid,), source_line=lambda pid, path, line: code)


def finding(cause: str, confidence: float = 0.6, utilization: float = 0.2) -> Finding:
    return Finding(cause=cause, severity="page", confidence=confidence, evidence={"utilization": utilization},
                   advice="", summary="")


TRAIN_LOOP = f"<module> (/home/ada/train.py:60);train (/home/ada/train.py:44)"
FORWARD = (f"{TRAIN_LOOP};_wrapped_call_impl ({SITE}/torch/nn/modules/module.py:1736);"
           f"_call_impl ({SITE}/torch/nn/modules/module.py:1747);forward (/home/ada/model.py:31);"
           f"_wrapped_call_impl ({SITE}/torch/nn/modules/module.py:1736);_call_impl ({SITE}/torch/nn/modules/module.py:1747);"
           f"forward ({SITE}/torch/nn/modules/linear.py:125)")
BACKWARD = (f"{TRAIN_LOOP};backward ({SITE}/torch/_tensor.py:581);backward ({SITE}/torch/autograd/__init__.py:347);"
            f"_engine_run_backward ({SITE}/torch/autograd/graph.py:825)")
COLLATE = (f"{TRAIN_LOOP};__next__ ({SITE}/torch/utils/data/dataloader.py:708);"
           f"_next_data ({SITE}/torch/utils/data/dataloader.py:764);fetch ({SITE}/torch/utils/data/_utils/fetch.py:55);"
           f"collate (/home/ada/prep.py:41);encode (/home/ada/prep.py:88)")
LOADER_QUEUE = (f"{TRAIN_LOOP};__next__ ({SITE}/torch/utils/data/dataloader.py:708);"
                f"_next_data ({SITE}/torch/utils/data/dataloader.py:1458);_get_data ({SITE}/torch/utils/data/dataloader.py:1420);"
                f"_try_get_data ({SITE}/torch/utils/data/dataloader.py:1251);get ({PY}/multiprocessing/queues.py:113);"
                f"poll ({PY}/multiprocessing/connection.py:257);_poll ({PY}/multiprocessing/connection.py:440);"
                f"wait ({PY}/multiprocessing/connection.py:1136);select ({PY}/selectors.py:415)")
EVAL_SYNC = f"{TRAIN_LOOP};evaluate (/home/ada/train.py:52)"
IPYKERNEL = (f"<module> ({SITE}/ipykernel_launcher.py:18);launch_instance ({SITE}/traitlets/config/application.py:1075);"
             f"start ({SITE}/ipykernel/kernelapp.py:739);start ({SITE}/tornado/platform/asyncio.py:205);"
             f"run_forever ({PY}/asyncio/base_events.py:608);_run_once ({PY}/asyncio/base_events.py:1898);"
             f"select ({PY}/selectors.py:468)")


# -- what the recorded programs were doing ----------------------------------------------------

def test_raw_output_gives_each_threads_share_innermost_frame_first():
    profile = recorded("tokenize_spin")
    assert profile.samples == 39
    top = profile.stacks[0]
    assert (top.thread, top.share) == ("MainThread", 0.769)
    assert top.frames[:2] == ("encode (tokenize_spin.py:4)", "collate.<locals>.<listcomp> (tokenize_spin.py:7)")


def test_a_loader_workers_stacks_keep_the_workers_own_pid():
    profile = recorded("loader")
    worker_pids = {s.pid for s in profile.stacks} - set(profile.pids)
    assert worker_pids == {15920}


def test_a_main_thread_in_queue_get_under_next_data_waits_on_the_loader():
    assert read_stacks(recorded("queue_wait")).main == {"loader_wait": 1.0}


def test_a_main_thread_in_encode_is_tokenizing():
    assert read_stacks(recorded("tokenize_spin")).main["tokenizing"] == pytest.approx(0.872)


@pytest.mark.parametrize("server", ["select_server", "asyncio_server", "http_server"])
def test_a_main_thread_in_a_servers_event_loop_is_a_server_waiting(server):
    assert read_stacks(recorded(server)).main == {"server_wait": 1.0}


def test_a_frame_whose_line_calls_os_read_is_a_file_read():
    assert read_stacks(recorded("file_read", code="return os.read(fd, 1 << 20)")).main == {"file_read": 1.0}


def test_a_read_into_a_tensors_numpy_view_is_a_file_read_not_a_gpu_sync():
    # The arguments run first; the thread stays in the outer call, the read.
    reading = read_stacks(recorded("file_read", code="os.preadv(fd, [buffer.numpy()], offset)"))
    assert reading.main == {"file_read": 1.0}


def test_a_copy_to_the_host_inside_a_call_nothing_knows_is_still_a_gpu_sync():
    assert read_stacks(recorded("file_read", code="arr = np.asarray(logits.cpu())")).main == {"gpu_sync": 1.0}


def test_a_line_that_is_no_whole_statement_is_read_by_the_calls_in_its_text():
    code = "    batch = f.readinto(buffer) if direct else (  # .item() later"
    assert read_stacks(recorded("file_read", code=code)).main == {"file_read": 1.0}


def test_a_line_with_a_null_byte_is_read_by_its_text():
    assert read_stacks(recorded("file_read", code="n = f.readinto(buf)\x00")).main == {"file_read": 1.0}


def test_loader_workers_are_read_by_their_main_thread_not_their_queue_feeder():
    reading = read_stacks(recorded("loader"))
    assert reading.strongest("workers") == ("data_loading", 0.897)  # the rest is its Queue.put
    assert reading.main["loader_wait"] == pytest.approx(0.615)


def test_the_summary_names_the_share_the_frame_and_the_users_caller():
    assert stack_summary(recorded("tokenize_spin")) == \
        "77 % in encode (tokenize_spin.py:4) ← collate.<locals>.<listcomp> (tokenize_spin.py:7)"


def test_a_main_thread_waiting_on_its_loader_is_summarised_with_the_workers_stack():
    assert stack_summary(recorded("loader")).endswith(
        "; loader worker 64 % in worker.<locals>.collate (loader.py:7) ← worker (loader.py:10)")


# -- corroboration: each rule, from what the frames mean ----------------------------------------

def test_input_starved_whose_busy_thread_is_the_models_forward_is_launch_bound():
    result = corroborate(finding("input_starved"), raw((FORWARD, 30), (BACKWARD, 8), (TRAIN_LOOP, 2)))
    assert result.cause == "launch_bound"
    assert result.evidence["stacks_corrected_from"] == "input_starved"


def test_a_cause_the_stacks_correct_keeps_what_contributed_beside_it():
    # A batch-1 decode: the counters' input_starved, its kernels reading DRAM all they run.
    dram = Contribution("memory_bound", "GPU bound by DRAM bandwidth", {"dram_active_over_sm_active": 1.06})
    launching = Contribution("launch_bound", "Kernels too small", {})
    starved = replace(finding("input_starved"), contributing=(dram, launching))
    result = corroborate(starved, raw((FORWARD, 30), (BACKWARD, 8), (TRAIN_LOOP, 2)))
    assert result.cause == "launch_bound" and result.contributing == (dram,)


def test_io_bound_whose_main_thread_runs_the_models_loop_is_launch_bound():
    result = corroborate(finding("io_bound"), raw((FORWARD, 30), (BACKWARD, 10)))
    assert (result.cause, result.evidence["stacks_corrected_from"]) == ("launch_bound", "io_bound")


def test_a_main_threads_backward_passes_and_optimizer_steps_are_its_training_share():
    step = f"{TRAIN_LOOP};step ({SITE}/torch/optim/adamw.py:200)"
    assert read_stacks(raw((FORWARD, 20), (BACKWARD, 15), (step, 5))).training == 0.5


def test_a_job_seen_training_that_runs_its_model_forward_only_is_evaluating():
    assert corroborate(finding("launch_bound"), raw((FORWARD, 30)), trained=False).cause == "launch_bound"
    result = corroborate(finding("launch_bound"), raw((FORWARD, 30)), trained=True)
    assert (result.cause, result.severity) == ("evaluating", "ticket")


def test_an_evaluation_right_after_a_checkpoint_is_evaluating_whatever_the_counters_window_saw():
    # An H100 lifecycle run: the window still held the checkpoint's copies to the host.
    result = corroborate(finding("host_transfer_bound"), raw((FORWARD, 30)), trained=True)
    assert (result.cause, result.evidence["stacks_corrected_from"]) == ("evaluating", "host_transfer_bound")
    assert corroborate(finding("host_transfer_bound"), raw((FORWARD, 30))).cause == "host_transfer_bound"
    # The GPU busy on memory in it is not waiting: that finding stands.
    assert corroborate(finding("memory_bound"), raw((FORWARD, 30)), trained=True).cause == "memory_bound"


def test_a_job_seen_training_whose_sample_holds_a_backward_pass_is_still_training():
    result = corroborate(finding("launch_bound"), raw((FORWARD, 30), (BACKWARD, 10)), trained=True)
    assert result.cause == "launch_bound"


def test_input_starved_with_the_main_thread_tokenizing_is_confirmed():
    result = corroborate(finding("input_starved", 0.6), raw((COLLATE, 34), (FORWARD, 6)))
    assert (result.cause, result.confidence) == ("input_starved", 0.75)
    assert result.evidence["stacks_agree"] == "main thread 85% in data loading, tokenizing or its queue"


def test_launch_bound_with_the_main_thread_waiting_on_the_loader_queue_is_input_starved():
    result = corroborate(finding("launch_bound"), raw((LOADER_QUEUE, 28), (FORWARD, 12)))
    assert result.cause == "input_starved"


def test_held_idle_with_the_main_thread_in_a_file_read_is_io_bound():
    result = corroborate(finding("held_idle"), raw((f"{TRAIN_LOOP};read_batch (/home/ada/train.py:20)", 40),
                                                   code="n = os.readv(fd, [buf])  # f.read(size)"))
    assert result.cause == "io_bound"
    assert result.advice.startswith("The input pipeline waits on storage")


def test_unknown_with_the_main_thread_in_an_event_loop_is_low_demand_ticket():
    result = corroborate(finding("unknown"), recorded("select_server"))
    assert (result.cause, result.severity) == ("low_demand", "ticket")


def test_held_idle_in_a_notebook_kernels_event_loop_stays_held_idle():
    result = corroborate(finding("held_idle"), raw((IPYKERNEL, 40)))
    assert result.cause == "held_idle"
    assert "stacks_agree" in result.evidence


def test_a_main_thread_syncing_on_item_in_its_evaluation_loop_is_evaluating_a_ticket():
    result = corroborate(finding("unknown"), raw((EVAL_SYNC, 30), (FORWARD, 10), code="total += loss.item()"))
    assert (result.cause, result.severity) == ("evaluating", "ticket")
    assert result.advice.startswith("The GPU waits in an evaluation loop")


# -- phases of a job's life: the frames around the work say which --------------------------------

LOAD = (f"{TRAIN_LOOP};load ({SITE}/torch/serialization.py:1462);_load ({SITE}/torch/serialization.py:1964);"
        f"load ({PY}/pickle.py:1205);readinto ({PY}/zipfile.py:900)")
SAFETENSORS = f"{TRAIN_LOOP};load_file ({SITE}/safetensors/torch.py:313)"
SAVE = (f"{TRAIN_LOOP};save ({SITE}/torch/serialization.py:944);_save ({SITE}/torch/serialization.py:1178);"
        f"write_record ({SITE}/torch/serialization.py:820)")
COMPILE = (f"{TRAIN_LOOP};_fn ({SITE}/torch/_dynamo/eval_frame.py:655);"
           f"_compile ({SITE}/torch/_dynamo/convert_frame.py:1039);"
           f"compile_fx ({SITE}/torch/_inductor/compile_fx.py:1873);subs ({SITE}/sympy/core/basic.py:1044)")
COMPILED_STEP = (f"{TRAIN_LOOP};_fn ({SITE}/torch/_dynamo/eval_frame.py:655);"
                 f"forward ({SITE}/torch/_inductor/output_code.py:460);call (/tmp/torchinductor_ada/ab/cab.py:120)")
FIRST_CALL = (f"{TRAIN_LOOP};_fn ({SITE}/torch/_dynamo/eval_frame.py:655);"
              f"runtime_wrapper ({SITE}/torch/_functorch/_aot_autograd/runtime_wrappers.py:340);"
              f"_AnalyzeCustomOpInputOutputMode.__torch_dispatch__ ({SITE}/torch/_functorch/_aot_autograd/runtime_wrappers.py:409);"
              f"OpOverload.__call__ ({SITE}/torch/_ops.py:865)")
IMPORTS = (f"<module> (/home/ada/train.py:3);_find_and_load (<frozen importlib._bootstrap>:1176);"
           f"_load_unlocked (<frozen importlib._bootstrap>:690);<module> ({SITE}/torch/nn/modules/conv.py:1)")
CUDA_INIT = f"{TRAIN_LOOP};_lazy_init ({SITE}/torch/cuda/__init__.py:319)"


@pytest.mark.parametrize("stack, cause", [
    (LOAD, "loading_weights"), (SAFETENSORS, "loading_weights"), (SAVE, "checkpointing"),
    (COMPILE, "compiling"), (FIRST_CALL, "compiling"), (IMPORTS, "starting"), (CUDA_INIT, "starting"),
])
def test_a_main_thread_in_a_phase_of_the_jobs_life_names_the_phase(stack, cause):
    result = corroborate(finding("io_bound"), raw((stack, 30), (FORWARD, 5)))
    assert (result.cause, result.severity) == (cause, "ticket")
    assert result.evidence["stacks_corrected_from"] == "io_bound"


def test_a_phase_spread_over_stacks_too_small_to_show_still_names_it():
    imports = [(IMPORTS.replace("conv.py:1", f"module_{i}.py:1"), 1) for i in range(30)]  # 3 % each
    profile = raw(*imports)
    assert profile.stacks == ()
    assert corroborate(finding("input_starved"), profile).cause == "starting"


def test_a_compiled_models_steady_steps_are_not_compiling():
    result = corroborate(finding("launch_bound"), raw((COMPILED_STEP, 30)))
    assert result.cause == "launch_bound"


def test_a_phase_seen_in_a_minority_of_samples_names_nothing():
    result = corroborate(finding("input_starved"), raw((SAVE, 5), (f"{TRAIN_LOOP};encode ({SITE}/tokenizers/x.py:1)", 30)))
    assert result.cause == "input_starved"


def test_unknown_with_the_loader_workers_busy_decoding_is_input_starved():
    worker = (f'process 4242:"python3 train.py";process 4250:"python3 train.py";thread (4250): MainThread;'
              f"_worker_loop ({SITE}/torch/utils/data/_utils/worker.py:351);"
              f"__getitem__ (/home/ada/data.py:30);open ({SITE}/PIL/Image.py:3469) 38")
    main = f'process 4242:"python3 train.py";thread (4242): MainThread;{LOADER_QUEUE} 40'
    result = corroborate(finding("unknown"), parse_raw(f"{main}\n{worker}", (4242,)))
    assert result.cause == "input_starved"


def test_weak_stack_evidence_leaves_the_cause_and_attaches_the_stacks():
    profile = raw((FORWARD, 15), (COLLATE, 8), (TRAIN_LOOP, 17))
    result = corroborate(finding("input_starved"), profile)
    assert (result.cause, result.confidence, result.stacks) == ("input_starved", 0.6, profile)


def test_the_evidence_holds_every_stack_sampled_by_activity_for_each_part_of_the_job():
    # Twenty short stacks of one thread each under the 5 % shown: the shares still count them.
    engine = [f'process 4242:"python3 train.py";thread (770);backward ({SITE}/torch/_functorch/x.py:1);'
              f'compile_fx_inner ({SITE}/torch/_inductor/compile_fx.py:{i}) 1' for i in range(20)]
    text = "\n".join([f'process 4242:"python3 train.py";thread (4242): MainThread;{BACKWARD} 20',
                      'process 4242:"python3 train.py";thread (770) 20', *engine])
    result = corroborate(finding("input_starved"), parse_raw(text, (4242,)))
    assert result.evidence["stack_activities"] == {"main": {"model": 1.0}, "threads": {"compiling": 0.5, "other": 0.5}}


@pytest.mark.parametrize("cause", ["memory_bound", "contention", "waiting_on_peers"])
def test_stacks_beside_a_cause_of_the_gpus_own_work_are_shown_and_judge_nothing(cause):
    # A decode loop bound by DRAM runs its model's forward on the main thread, as a launch-bound one
    # does; a sharer may be compiling: the counters' cause stands, the stacks show whose code it is.
    for stacks in ((FORWARD, 30), (COMPILE, 30)):
        profile = raw(stacks)
        result = corroborate(finding(cause), profile)
        assert (result.cause, result.confidence, result.stacks) == (cause, 0.6, profile)
        assert "stack_activities" in result.evidence


def test_stacks_that_could_not_be_taken_are_attached_with_the_reason():
    result = corroborate(finding("unknown"), StackProfile(pids=(1,), samples=0, unavailable="simulated"))
    assert result.stacks.unavailable == "simulated"


def test_a_main_thread_tokenizing_longer_than_it_launches_the_model_is_input_starved():
    # A serial loop on an H200 (a BERT step fed by a pure-Python tokenizer): the tokenizer's time is
    # spread over many short stacks, none of which alone is a twentieth of the samples.
    tokenizing = [(f"{TRAIN_LOOP};__call__ ({SITE}/transformers/tokenization_utils_base.py:2512);"
                   f"_tokenize ({SITE}/transformers/models/bert/tokenization_bert.py:{100 + i})", 3) for i in range(10)]
    result = corroborate(finding("launch_bound"), raw(*tokenizing, (FORWARD, 12), (BACKWARD, 10), (TRAIN_LOOP, 20)))
    assert result.cause == "input_starved"


def bert_window(utilization: float) -> Finding:
    """An H100 window of that loop: its py-spy sample caught 46 % tokenizing, 54 % in backward."""
    tokenizing = [(f"{TRAIN_LOOP};__call__ ({SITE}/transformers/tokenization_utils_base.py:2512);"
                   f"_tokenize ({SITE}/transformers/models/bert/tokenization_bert.py:{100 + i})", 5) for i in range(7)]
    return corroborate(finding("unknown", utilization=utilization), raw(*tokenizing, (BACKWARD, 41)))


def test_a_loop_launching_longer_than_it_tokenizes_is_input_starved_when_its_kernels_fill_the_launching():
    # The GPU busy 0.55 of the window: its kernels ran while the thread launched them, so the GPU's
    # idle time is the thread's tokenizing.
    assert bert_window(utilization=0.55).cause == "input_starved"


def test_the_same_loop_with_the_gpu_idle_while_it_launches_is_launch_bound():
    assert bert_window(utilization=0.05).cause == "launch_bound"


def test_an_import_inside_from_pretrained_is_part_of_loading_the_weights():
    lazy_import = (f"{TRAIN_LOOP};from_pretrained ({SITE}/transformers/modeling_utils.py:4000);"
                   f"_find_and_load (<frozen importlib._bootstrap>:1360);<module> ({SITE}/pandas/__init__.py:1)")
    result = corroborate(finding("input_starved"), raw((lazy_import, 20), (LOAD, 15), (FORWARD, 5)))
    assert result.cause == "loading_weights"


def test_the_imports_a_first_torch_compile_call_makes_are_compiling_not_starting_up():
    # An H100 lifecycle run: right after from_pretrained, Module.compile on each decoder layer spent
    # seconds importing the compiler, which the import frames alone read as starting up.
    first_compile = (f"{TRAIN_LOOP};compile ({SITE}/torch/nn/modules/module.py:2990);"
                     f"compile ({SITE}/torch/__init__.py:2640);_find_and_load (<frozen importlib._bootstrap>:1360);"
                     f"<module> ({SITE}/torch/_dynamo/__init__.py:1)")
    result = corroborate(finding("input_starved"), raw((first_compile, 25), (LOAD, 15)))
    assert result.cause == "compiling"


def test_a_main_thread_with_no_python_frame_has_returned_from_its_script_and_is_exiting():
    # py-spy's line for a main thread after its script returned: the thread, no frame, a count.
    text = ('process 4242:"python3 train.py";thread (4242): MainThread;<module> (/home/ada/train.py:80) 8\n'
            'process 4242:"python3 train.py";thread (4242): MainThread 32')
    profile = parse_raw(text, (4242,))
    assert read_stacks(profile).main == {"other": 0.2, "exiting": 0.8}
    assert corroborate(finding("input_starved"), profile).cause == "exiting"
    assert stack_summary(profile) == "80 % with no Python frame"


def test_a_main_thread_with_no_python_frame_is_exiting_only_in_a_process_seen_running_a_script():
    # An interpreter embedded in a native server: its main thread runs native code between calls
    # into Python (the outermost frame a function, not a module's top level).
    embedded = parse_raw('process 4242:"tritonserver_stub";thread (4242): MainThread;execute (/models/m/model.py:40) 8\n'
                         'process 4242:"tritonserver_stub";thread (4242): MainThread 32', (4242,))
    assert read_stacks(embedded).main == {"other": 1.0}
    finalizing = parse_raw('process 4242:"python3 train.py";thread (4242): MainThread 32', (4242,))
    assert read_stacks(finalizing).main == {"other": 1.0}
    assert read_stacks(finalizing, ran_script=(4242,)).main == {"exiting": 1.0}


def test_another_thread_with_no_python_frame_is_a_native_thread_not_an_exit():
    text = (f'process 4242:"python3 train.py";thread (4242): MainThread;{FORWARD} 30\n'
            'process 4242:"python3 train.py";thread (0x7f3a): Thread-2 30')
    assert read_stacks(parse_raw(text, (4242,))).threads == {"other": 1.0}


def test_an_atexit_handler_joining_the_compile_workers_is_exiting():
    # An H100 lifecycle run: a compiled job's exit spent seconds in inductor's atexit hook, which
    # the torch/_inductor path alone reads as model code.
    shutdown = (f"shutdown_compile_workers ({SITE}/torch/_inductor/async_compile.py:130);"
                f"shutdown ({SITE}/torch/_inductor/compile_worker/subproc_pool.py:290);"
                f"wait ({PY}/subprocess.py:1264);_wait ({PY}/subprocess.py:2047)")
    assert corroborate(finding("input_starved"), raw((shutdown, 30), (FORWARD, 10))).cause == "exiting"


def test_a_phase_named_by_the_last_sample_goes_on_while_a_thread_still_spends_a_tenth_in_it():
    # An H100 lifecycle run: a compiled model's first step; the main thread waits in backward while
    # autograd's thread compiles the backward graph (18 % of the sample), the GPU under throughout.
    backward_compile = (f"backward ({SITE}/torch/_functorch/_aot_autograd/runtime_wrappers.py:2100);"
                        f"compile_fx_inner ({SITE}/torch/_inductor/compile_fx.py:700)")
    text = (f'process 4242:"python3 train.py";thread (4242): MainThread;{BACKWARD} 40\n'
            f'process 4242:"python3 train.py";thread (0x7f3a): Thread-3;{backward_compile} 7\n'
            f'process 4242:"python3 train.py";thread (0x7f3a): Thread-3;backward ({SITE}/torch/_functorch/x.py:1) 33')
    sample = parse_raw(text, (4242,))
    going = corroborate(finding("input_starved"), sample, going_on="compiling")
    assert (going.cause, going.evidence["stacks_say"]) == ("compiling", "a thread still 18% compiling the model")
    assert corroborate(finding("input_starved"), sample).cause == "launch_bound"  # not named before: not enough


# -- read against the GPU while the sample was taken -------------------------------------------

def test_a_sample_that_outlasted_a_checkpoint_names_it_from_the_part_the_gpu_waited():
    # Taken as a 7 s checkpoint ended (H100, a 3.6B model): 41 % saving, then the steps again,
    # the GPU under the threshold 40 % of the sample. The checkpoint filled that part.
    sample = raw((SAVE, 8), (BACKWARD, 12))
    assert corroborate(finding("host_transfer_bound"), sample, during=GpuDuring(0.55, 0.4)).cause == "checkpointing"


def test_the_same_share_of_a_phase_in_a_sample_taken_wholly_under_the_threshold_is_not_enough():
    sample = raw((SAVE, 8), (BACKWARD, 12))
    assert corroborate(finding("host_transfer_bound"), sample, during=GpuDuring(0.0, 1.0)).cause == "host_transfer_bound"


def test_a_sample_taken_while_the_gpu_was_busy_says_nothing_of_why_it_waited_before():
    # The model's loop, sampled once the GPU ran it again: not launch-bound, the counters' cause stands.
    result = corroborate(finding("io_bound"), raw((FORWARD, 30), (BACKWARD, 10)), during=GpuDuring(0.9, 0.1))
    assert result.cause == "io_bound" and "stacks_corrected_from" not in result.evidence


def test_a_loop_is_judged_against_the_gpus_utilization_while_it_was_sampled_not_the_windows():
    # A fine-tune's first steps after loading: the window's mean holds the idle loading (0.00),
    # the sample's own seconds had the GPU busy 40 % as the thread launched its kernels.
    assert bert_window(utilization=0.0).cause == "launch_bound"
    tokenizing = [(f"{TRAIN_LOOP};__call__ ({SITE}/transformers/tokenization_utils_base.py:2512);"
                   f"_tokenize ({SITE}/transformers/models/bert/tokenization_bert.py:{100 + i})", 5) for i in range(7)]
    result = corroborate(finding("unknown", utilization=0.0), raw(*tokenizing, (BACKWARD, 41)),
                         during=GpuDuring(0.4, 1.0))
    assert result.cause == "input_starved"


def test_the_gpu_during_a_sample_is_the_ticks_it_spanned_weighted_by_their_overlap():
    ticks = [GpuTick(10.0, 1.0, 0.0, True), GpuTick(11.0, 1.0, 0.9, False), GpuTick(12.0, 1.0, 0.9, False)]
    assert gpu_during(ticks, start=9.0, end=11.0) == GpuDuring(utilization=0.45, under_share=0.5)
    assert gpu_during(ticks, start=9.5, end=11.5) == GpuDuring(utilization=0.675, under_share=0.25)
    assert gpu_during(ticks, start=20.0, end=22.0) is None


def test_a_few_samples_of_a_running_programs_main_thread_without_a_frame_are_left_out():
    # An H100 job compiling: 9 % of its main thread's samples had no frame (py-spy reads without
    # stopping the process, as frames are pushed and popped): not an exit, and not time spent.
    text = (f'process 4242:"python3 train.py";thread (4242): MainThread;{COMPILE} 91\n'
            'process 4242:"python3 train.py";thread (4242): MainThread 9')
    assert read_stacks(parse_raw(text, (4242,)), ran_script=(4242,)).main == {"compiling": 1.0}


def test_a_sample_holding_two_phases_places_the_turn_at_the_share_spent_in_the_first():
    # An H100 lifecycle run: the sample across the loading → compile turn, its main thread 46 %
    # still loading (the job logged the turn 0.92 s into the sample's 2 s).
    across = StackReading(main={"loading_weights": 0.462, "compiling": 0.543}, threads={}, workers={})
    assert phase_turn(across, "loading_weights", "compiling") == pytest.approx(0.46, abs=0.005)
    assert phase_turn(StackReading(main={"compiling": 1.0}, threads={}, workers={}), "loading_weights", "compiling") is None
