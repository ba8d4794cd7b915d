"""Tests of vitkeras.quiet: TensorFlow's native start-up noise is dropped, every other native line is kept."""

import io
import logging
import os
import sys

from vitkeras.quiet import native_logs_filtered


def test_known_startup_lines_are_dropped_and_other_native_lines_kept(capfd):
    kept = io.StringIO()
    with native_logs_filtered(stream=kept):
        os.write(2, b"I0000 00:00:1.5 7 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"E0000 00:00:1.5 7 cuda_executor.cc:1228] failed call to cuInit: CUDA_ERROR_NO_DEVICE\n")
        os.write(2, b"E0000 00:00:1.6 7 bfc_allocator.cc:485] Allocator ran out of memory\n")
        print("a Python message", file=sys.stderr)
    assert kept.getvalue() == "E0000 00:00:1.6 7 bfc_allocator.cc:485] Allocator ran out of memory\n"
    assert "a Python message" in capfd.readouterr().err  # Python's own stderr stays live, not captured


def test_disabled_filter_lets_everything_through(capfd):
    with native_logs_filtered(enabled=False):
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
    assert "Could not find cuda drivers" in capfd.readouterr().err


def test_a_logging_handler_made_inside_the_filter_still_writes_after_it(capsys):
    # TensorFlow makes its logger's handler while `import vitkeras` filters: sys.stderr is then the
    # filter's own stream, which is closed at the end. Its later warnings must still reach stderr.
    logger = logging.getLogger("vitkeras-test-quiet")
    with native_logs_filtered(stream=io.StringIO()):
        handler = logging.StreamHandler()  # writes to sys.stderr as it is now
        logger.addHandler(handler)
    try:
        logger.warning("a warning after the filter")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "a warning after the filter" in err and "Logging error" not in err
