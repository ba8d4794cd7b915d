"""Keeps TensorFlow's and XLA's native start-up lines out of the course's output, without hiding real errors.

TensorFlow, XLA and CUDA write lines such as "I0000 ... oneDNN custom operations
are on", "Could not find cuda drivers" or "E0000 ... failed call to cuInit: CUDA
error" straight to file descriptor 2 from C++, before and regardless of
`TF_CPP_MIN_LOG_LEVEL`; on a machine without a GPU they are noise.
`native_logs_filtered` sends descriptor 2 to a temporary file while it is
active, keeps Python's own `sys.stderr` (warnings, tracebacks, our messages) on
the terminal, and at the end writes back every captured native line that is
not one of those known start-up messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

__all__ = ["STARTUP_NOISE", "native_logs_filtered"]

# Native lines that say nothing about the run: CPU feature notes, missing CUDA on a CPU machine,
# plugin registration, the absl preamble. Anything else is written back.
STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|cuda_diagnostics|cuda_executor\.cc|cudart_stub\.cc"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation_placer\.cc.*already registered"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .*rebuild TensorFlow"
    r"|TF-TRT Warning: Could not find TensorRT"
)


@contextlib.contextmanager
def native_logs_filtered(enabled=True, stream=None):
    """While active, native writes to descriptor 2 are captured; unknown lines are written back at the end.

    Args:
        enabled: False does nothing (`--verbose`).
        stream: where kept lines go (default: the terminal's stderr).

    Example:
    >>> with native_logs_filtered():
    ...     _ = os.write(2, b"I0000 00:00 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n")
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        sys.stderr = terminal  # Python's own messages stay live
        try:
            yield
        finally:
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if line.strip() and not STARTUP_NOISE.search(line)]
            out = stream or terminal
            for line in kept:
                out.write(line + "\n")
            out.flush()
            _repoint_handlers(terminal, python_stderr)
            terminal.close()


def _repoint_handlers(old, new):
    """Logging handlers made while the filter was active write to `old` (then `sys.stderr`); send them to `new`.

    TensorFlow makes its logger's handler on import, inside the filter: without this, its later
    warnings (an AutoGraph note, say) would hit a closed file and print "--- Logging error ---".
    """
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
