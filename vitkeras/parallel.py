"""Independent training runs spread over worker processes, so that small models keep every core busy.

One process training one of the course's small models does not keep two CPU
cores busy: its steps are many small operations, and a second thread speeds
a step up by far less than 2x (the main job's CNN not at all). Two processes
of one thread each, each training its own model, did the work of 1.45 to 1.7
processes alone (`benchmarks/main_job_step_time.py --pair`, 2 cores,
TensorFlow), and `data_efficiency(workers=2)` took 6 min 50 s where one
process took 9 min 28 s (benchmarks/RESULTS.md, "Two runs at a time"); at the main job's smaller
batches since December 2026, 1 min 34 s where one process took 2 min 25 s, so `data_efficiency`
now uses two workers by default on a CPU with at least two cores.

`run_tasks` is that, and only that: the caller's own function trains one task
in a worker, the results come back to the calling process in the order they
finish, and that process alone writes them (so an interrupted run keeps
whatever had finished). With `workers=1` everything runs in the calling
process, with no second process at all.

Workers are started with "spawn" (a fresh Python that imports vitkeras), never
"fork": a forked copy of a process whose TensorFlow or JAX runtime already
runs threads can hang. Each worker runs on its own `cores // workers` cores
(CPU affinity, where the OS has it: Linux) and is told that many threads
through the environment variables TensorFlow and PyTorch read at start-up.
The affinity is what holds JAX to its share: XLA's CPU client has no
thread-count setting, and `--xla_cpu_multi_thread_eigen=false` left a 2048x2048
matmul on both cores (0.037 s a matmul with or without it, 0.094 s pinned to
one core; JAX 0.10.2).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import traceback

__all__ = ["available_cores", "run_tasks"]


def available_cores():
    """CPU cores this process may run on (the container's share where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


def _core_shares(count):
    """`count` disjoint lists of this process's cores, `cores // count` each (None each without affinity)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows: no affinity; the thread settings alone apply
        return [None] * count
    share = max(1, len(cores) // count)
    return [cores[(n * share) % len(cores):][:share] for n in range(count)]


def _thread_environment(threads):
    """Environment variables that limit TensorFlow and PyTorch (OpenMP) to `threads` threads at start-up."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def _environment(values):
    """`os.environ` with `values` set while the block runs (spawned children copy it), then as it was."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _worker(number, cores, setup, work, inbox, outbox):
    """A worker's loop: build its state once, then run the tasks the parent sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    if cores is not None:  # before `setup` starts any backend's thread pool
        os.sched_setaffinity(0, cores)

    def log(text):
        outbox.put(("log", number, text))

    try:
        state = setup()
    except BaseException:
        outbox.put(("error", number, None, traceback.format_exc()))
        return
    outbox.put(("ready", number))
    while (task := inbox.get()) is not None:
        try:
            outbox.put(("result", number, task, work(state, task, log)))
        except BaseException:
            outbox.put(("error", number, task, traceback.format_exc()))
            return


def _next_task(pending, last_key, key):
    """The first pending task with the key of the worker's last task (a model it has compiled), else the first."""
    for index, task in enumerate(pending):
        if last_key is not None and key(task) == last_key:
            return pending.pop(index)
    return pending.pop(0)


def _died(number, exitcode, task, started):
    """The error for a worker process that ended without a word (killed, out of memory, or never started)."""
    message = (f"worker {number} stopped (exit code {exitcode}) while running {task!r}, without an error of its "
               f"own; tasks finished before it are kept.")
    if started:
        return message + " Was it killed, or out of memory?"
    return (message + " It may never have started (its error is printed above): each worker process imports "
            "the script that started it, so a script must make its call under `if __name__ == \"__main__\":`, "
            "or pass workers=1 to run everything in one process.")


def run_tasks(work, tasks, setup, on_result, workers=1, key=None, log=print, state=None):
    """Runs `work(state, task, log)` for every task, `workers` at a time, and hands each result to `on_result`.

    Args:
        work: a module-level function (workers import it by name) `(state, task, log) -> result`.
        tasks: picklable task descriptions, in the order to start them.
        setup: a picklable callable `() -> state`, called once in each worker (e.g. loads the data).
        on_result: `(task, result)`, called in this process as each task finishes (e.g. saves it).
        workers: processes that run tasks at once; 1 runs them here, one after the other.
        key: `task -> hashable`; an idle worker prefers a task with its last task's key (None: any).
        log: print-like function for the workers' progress lines.
        state: with `workers=1`, the state to use instead of calling `setup`.

    Raises:
        RuntimeError: when a task (or a worker's setup) raises, with its traceback; the tasks
        that finished before have been handed to `on_result`, and the other workers are stopped.

    Example:
    >>> done = {}
    >>> run_tasks(lambda state, task, log: state * task, [1, 2], setup=lambda: 10, on_result=done.__setitem__)
    >>> done
    {1: 10, 2: 20}
    """
    tasks = list(tasks)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}.")
    if workers == 1 or len(tasks) <= 1:
        state = setup() if state is None else state
        for task in tasks:
            on_result(task, work(state, task, log))
        return
    key = key or (lambda task: None)
    context = multiprocessing.get_context("spawn")
    outbox = context.Queue()
    count = min(workers, len(tasks))
    threads = max(1, available_cores() // count)
    shares = _core_shares(count)
    inboxes = [context.Queue() for _ in range(count)]
    with _environment(_thread_environment(threads)):
        processes = [context.Process(target=_worker, args=(n, shares[n], setup, work, inboxes[n], outbox),
                                     daemon=True) for n in range(count)]
        for process in processes:
            process.start()
    pending, running, ready = list(tasks), {}, set()
    try:
        for number in range(count):
            running[number] = _next_task(pending, None, key)
            inboxes[number].put(running[number])
        while running:
            try:
                kind, number, *message = outbox.get(timeout=1.0)
            except queue.Empty:
                for number, task in running.items():
                    if not processes[number].is_alive():
                        raise RuntimeError(_died(number, processes[number].exitcode, task, number in ready))
                continue
            if kind == "ready":
                ready.add(number)
                continue
            if kind == "log":
                log(message[0])
                continue
            task, payload = message
            if kind == "error":
                what = "its setup" if task is None else repr(running[number])
                raise RuntimeError(f"worker {number} failed on {what}; tasks finished before it are kept. "
                                   f"Its traceback:\n{payload}")
            finished = running.pop(number)
            on_result(finished, payload)
            if pending:
                running[number] = _next_task(pending, key(finished), key)
                inboxes[number].put(running[number])
    finally:
        for number, process in enumerate(processes):
            if process.is_alive() and number not in running:
                inboxes[number].put(None)
        for process in processes:
            process.join(timeout=None if not running else 0)
            if process.is_alive():
                process.terminate()
                process.join()
