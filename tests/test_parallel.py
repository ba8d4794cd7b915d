"""vitkeras.parallel: tasks spread over worker processes, results and errors handed back to the caller.

The work functions live at module level: worker processes import them by name.
"""

import os
import time

import pytest

from conftest import default_backend_only
from vitkeras import parallel


def square_with_pid(state, task, log):
    """A task's result: state * task**2, the worker's process id, its TensorFlow thread setting and its cores."""
    log(f"squaring {task}")
    time.sleep(0.2)  # long enough that both workers get tasks
    return state * task * task, os.getpid(), os.environ.get("TF_NUM_INTRAOP_THREADS"), tuple(_cores())


def _cores():
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def fail_on_negative(state, task, log):
    if task < 0:
        time.sleep(3.0)  # the other worker finishes the quick tasks meanwhile
        raise ValueError(f"negative task {task}")
    return task


def exit_on_negative(state, task, log):
    if task < 0:
        time.sleep(0.5)  # lets the worker's "ready" message leave its queue's buffer
        os._exit(3)  # a worker killed from outside (out of memory) ends like this: no traceback
    return task


def ten():
    return 10


def collect():
    results = {}
    return results, results.__setitem__


# Worker processes import TensorFlow (seconds); the scheduling itself does not depend on the backend.
pytestmark = default_backend_only


def test_workers_run_every_task_in_their_own_processes_and_hand_results_back():
    results, save = collect()
    lines = []
    before = dict(os.environ)
    parallel.run_tasks(square_with_pid, [1, 2, 3, 4], ten, save, workers=2, log=lines.append)
    assert {task: value for task, (value, _, _, _) in results.items()} == {1: 10, 2: 40, 3: 90, 4: 160}
    pids = {pid for _, pid, _, _ in results.values()}
    assert os.getpid() not in pids and len(pids) == 2
    # Each worker gets its share of the cores: that many threads, and (where the OS has affinity) cores
    # of its own; this process's environment and cores are left as they were.
    share = max(1, parallel.available_cores() // 2)
    assert {threads for _, _, threads, _ in results.values()} == {str(share)}
    if _cores():
        cores_of = {pid: set(cores) for _, pid, _, cores in results.values()}
        first, second = cores_of.values()
        assert len(first) == len(second) == share and first <= set(_cores()) and second <= set(_cores())
        assert not first & second or len(_cores()) == 1
    assert dict(os.environ) == before
    assert sorted(lines) == [f"squaring {n}" for n in (1, 2, 3, 4)]


def test_one_worker_runs_here_with_the_given_state():
    results, save = collect()
    parallel.run_tasks(square_with_pid, [1, 2], ten, save, workers=1, state=3)
    assert {task: value for task, (value, _, _, _) in results.items()} == {1: 3, 2: 12}
    assert {pid for _, pid, _, _ in results.values()} == {os.getpid()}


def test_a_failing_task_is_reported_with_its_traceback_and_finished_tasks_are_kept():
    results, save = collect()
    with pytest.raises(RuntimeError, match=r"(?s)failed on -1; tasks finished before it are kept.*"
                                           r"ValueError: negative task -1"):
        parallel.run_tasks(fail_on_negative, [-1, 1, 2, 3], ten, save, workers=2)
    assert results == {1: 1, 2: 2, 3: 3}


def test_a_worker_that_dies_without_a_word_is_an_error_naming_its_task():
    results, save = collect()
    with pytest.raises(RuntimeError, match=r"worker \d stopped \(exit code 3\) while running -5"):
        parallel.run_tasks(exit_on_negative, [1, -5], ten, save, workers=2)
    assert results in ({}, {1: 1})


def test_an_idle_worker_prefers_a_task_of_its_last_kind():
    pending = [("vit", 1), ("cnn", 2), ("vit", 3)]
    kind = lambda task: task[0]  # noqa: E731
    assert parallel._next_task(pending, "cnn", kind) == ("cnn", 2)
    assert parallel._next_task(pending, "cnn", kind) == ("vit", 1)  # none left of its kind: the first
    assert parallel._next_task(pending, None, kind) == ("vit", 3) and pending == []


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_integer(workers):
    with pytest.raises(ValueError, match=rf"workers must be a positive integer, got {workers!r}"):
        parallel.run_tasks(square_with_pid, [1], ten, print, workers=workers)
