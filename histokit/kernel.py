"""One Jupyter kernel for a whole ``histokit reproduce``: started once, its namespace cleared between stage notebooks.

A fresh kernel per stage costs its start-up and the imports of torch, timm, faiss and the kit (10-15 s on two
cores) 28 times over for the four papers, far more than most stages compute. Between notebooks the kernel runs
IPython's ``%reset -f`` and a garbage collection, so no variable of one stage is visible to the next; imported
modules stay loaded, which is the point. Every stage starts from ``open_stage``, which seeds Python, NumPy and torch,
so a stage computes in a warm kernel what it computes in a fresh one (``tests/test_kernel.py`` checks it).

The kernel talks over IPC sockets in a private temporary folder, not TCP: nothing listens on a port, and ipykernel
has no reason to warn about unencrypted TCP.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger
from papermill.utils import merge_kwargs, remove_args

ENGINE_NAME = "histokit-warm"

# Run in the kernel between two notebooks: forget every name the last one defined and close its figures.
RESET_CODE = ("get_ipython().run_line_magic('reset', '-f')\n"
              "import gc as _gc, sys as _sys\n"
              "if 'matplotlib.pyplot' in _sys.modules: _sys.modules['matplotlib.pyplot'].close('all')\n"
              "_gc.collect(); del _gc, _sys")


# What every stage imports first; run once when the kernel starts (see WarmKernel.prewarm).
PREWARM_CODE = ("import torch, timm, faiss, matplotlib.pyplot, pandas, papermill\n"
                "import histokit.stages, histokit.stages.common, histokit.models, histokit.ssl.registry, "
                "histokit.retrieval, histokit.evaluation")


class KernelError(RuntimeError):
    """The warm kernel could not be started or reset."""


class WarmKernel:
    """A kernel that runs one notebook after another (``papermill.execute_notebook(..., **kernel.papermill_args())``).

    Use it as a context manager; it shuts the kernel down at the end, after a failed notebook (so the next one starts
    clean) and on Ctrl-C.
    """

    def __init__(self, kernel_name: str = "python3", cwd: Optional[Path] = None, startup_timeout: float = 120.0,
                 env: Optional[dict] = None):
        self.kernel_name, self.cwd, self.startup_timeout = kernel_name, cwd, startup_timeout
        self.env = dict(env or {})  # added to this process's environment for the kernel
        self._km = None
        self._folder: Optional[Path] = None
        self.notebooks_run = 0
        self.starts = 0
        self._prewarm = None          # (client, msg_id, started) of imports still running in the kernel
        self.prewarm_seconds: Optional[float] = None

    def __enter__(self) -> "WarmKernel":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def papermill_args(self) -> dict:
        """The ``execute_notebook`` arguments that run the next notebook in this kernel (started or reset first)."""
        return {"engine_name": ENGINE_NAME, "km": self._ready()}

    def prewarm(self, code: str = PREWARM_CODE) -> None:
        """Start the kernel and let it import the kit's heavy modules in the background, while this process does
        its own checks; the first notebook waits for them (:meth:`wait_prewarmed`). Their time (5-10 s on two
        cores) is then the kernel's start-up, not the first stage's."""
        if self._km is None:
            self._start()
        client = self._km.client()
        client.start_channels()
        self._prewarm = (client, client.execute(code, silent=True, store_history=False), time.perf_counter())
        self.notebooks_run = max(self.notebooks_run, 1)  # the first notebook then starts from a cleared namespace

    def wait_prewarmed(self, timeout: float = 300.0) -> Optional[float]:
        """Block until :meth:`prewarm`'s imports are done; their seconds (None when there was nothing to wait for).
        A failed import is not an error here: the notebook that needs the module reports it in its own cell."""
        if self._prewarm is None:
            return None
        client, msg_id, started = self._prewarm
        self._prewarm = None
        try:
            while True:
                reply = client.get_shell_msg(timeout=timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        except Exception as exc:  # queue.Empty on a timeout, or the kernel died: start clean
            self.shutdown()
            raise KernelError(f"the Jupyter kernel did not finish importing the kit within {timeout:.0f} s "
                              f"({type(exc).__name__})") from None
        finally:
            client.stop_channels()
        self.prewarm_seconds = time.perf_counter() - started
        return self.prewarm_seconds

    def discard(self) -> None:
        """Shut the kernel down (after a failure); the next notebook gets a new one."""
        self.shutdown()

    def shutdown(self) -> None:
        if self._prewarm is not None:
            self._prewarm[0].stop_channels()
            self._prewarm = None
        if self._km is not None:
            try:
                if self._km.has_kernel:
                    self._km.shutdown_kernel(now=True)
            finally:
                self._km.cleanup_resources()
                self._km = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _ready(self):
        self.wait_prewarmed()
        if self._km is not None and not self._km.is_alive():  # died (out of memory, a segfault): start again
            self.shutdown()
        if self._km is None:
            self._start()
        elif self.notebooks_run:
            self._reset()
        self.notebooks_run += 1
        return self._km

    def _start(self) -> None:
        from jupyter_client import KernelManager

        self._folder = Path(tempfile.mkdtemp(prefix="histokit-kernel-"))
        self._km = KernelManager(kernel_name=self.kernel_name, transport="ipc",
                                 connection_file=str(self._folder / "kernel.json"))
        kwargs = {"cwd": str(self.cwd)} if self.cwd else {}
        self._km.start_kernel(env={**os.environ, **self.env}, **kwargs)
        client = self._km.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=self.startup_timeout)
        except RuntimeError as exc:
            self.shutdown()
            raise KernelError(f"the Jupyter kernel {self.kernel_name!r} did not start within "
                              f"{self.startup_timeout:.0f} s: {exc}") from None
        finally:
            client.stop_channels()
        self.starts += 1
        self.notebooks_run = 0

    def _reset(self) -> None:
        client = self._km.blocking_client()
        client.start_channels()
        try:
            reply = client.execute_interactive(RESET_CODE, store_history=False, timeout=60,
                                               output_hook=lambda msg: None)
        finally:
            client.stop_channels()
        if reply["content"].get("status") != "ok":
            self.shutdown()
            raise KernelError(f"could not clear the kernel between notebooks: {reply['content'].get('evalue')}")


class WarmKernelEngine(NBClientEngine):
    """papermill's nbclient engine, run in a kernel it is given (``km=``) and leaves running."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, **kwargs):
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        final_kwargs = merge_kwargs(kwargs, timeout=execution_timeout, startup_timeout=start_timeout,
                                    kernel_name=kernel_name, log=logger, log_output=log_output, stdout_file=stdout_file,
                                    stderr_file=stderr_file)
        client = PapermillNotebookClient(nb_man, **final_kwargs)
        try:
            return client.execute()
        finally:  # the kernel stays; this notebook's own channels to it do not
            if client.kc is not None:
                client.kc.stop_channels()


papermill_engines.register(ENGINE_NAME, WarmKernelEngine)
