"""Dask, imported only when asked for: connecting to a cluster with clear errors.

:func:`dask_client` gives a client of a local cluster or of a running scheduler. On a
multi-machine cluster run ``dask scheduler`` on one machine and ``dask worker
tcp://HOST:8786`` on each machine (with kinabs installed), then pass the address:
``kinabs.dask_client("tcp://HOST:8786")``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from kinabs._errors import DaskError

__all__ = ["DaskError", "dask_client", "is_dask_client", "check_client"]

_INSTALL = "pip install 'kinabs[dask]'  (dask[distributed])"


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise DaskError(f"the Dask executor needs dask.distributed, which is not installed "
                        f"({exc}). Install it with: {_INSTALL}") from exc
    return distributed


def dask_client(scheduler: str | None = None, *, workers: int | None = None,
                timeout: float = 10.0) -> Any:
    """A ``dask.distributed.Client`` to run a fit on (pass it as ``executor=``).

    Args:
        scheduler: address of a running Dask scheduler (``"tcp://host:8786"``). ``None``
            starts a ``LocalCluster`` on this machine instead.
        workers: worker processes of the local cluster (one thread each: every worker's
            JAX program already uses the machine's cores); default: one per two cores.
        timeout: seconds to wait for the scheduler to answer; an unreachable address
            raises :class:`DaskError` then, before any work starts.

    Close the client when done (``client.close()``); a local cluster closes with it.

    Example (skipped when doctests run: a local cluster takes seconds to start):
        >>> import kinabs
        >>> client = kinabs.dask_client(workers=2)                       # doctest: +SKIP
        >>> results = trainer.train(executor=client, run_dir="run-1")    # doctest: +SKIP
        >>> client.close()                                               # doctest: +SKIP
    """
    distributed = _distributed()
    if scheduler is not None and workers is not None:
        raise DaskError("give either scheduler= (an existing cluster) or workers= (a local "
                        f"cluster on this machine), not both; got scheduler={scheduler!r} "
                        f"and workers={workers!r}.")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler.strip():
            raise DaskError(f"scheduler must be an address such as 'tcp://host:8786'; got "
                            f"{scheduler!r}.")
        try:
            return distributed.Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DaskError(
                f"could not reach the Dask scheduler at {scheduler!r} within {timeout:g} s "
                f"({type(exc).__name__}: {exc}). Check the address and port, that `dask "
                "scheduler` is running there and that this machine can reach it; or leave "
                "out the scheduler to use a local cluster.") from exc
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise DaskError(f"workers must be an integer >= 1; got {workers!r}.")
    if workers is None:
        workers = max(1, (os.cpu_count() or 2) // 2)
    return distributed.Client(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None)


def is_dask_client(obj: Any) -> bool:
    """Whether ``obj`` is a ``dask.distributed.Client`` (without importing dask)."""
    if "distributed" not in sys.modules:
        return False
    return isinstance(obj, sys.modules["distributed"].Client)


def check_client(client: Any, *, wait: float = 30.0) -> None:
    """Raise :class:`DaskError` unless ``client`` is connected and has a worker (waits up
    to ``wait`` seconds for one to join)."""
    status = getattr(client, "status", None)
    if status != "running":
        raise DaskError(f"the Dask client is not connected (status {status!r}); create a "
                        "new one with kinabs.dask_client(...).")
    try:
        client.wait_for_workers(1, timeout=wait)
    except TimeoutError as exc:
        address = getattr(client.scheduler, "address", "?")
        raise DaskError(
            f"the Dask scheduler at {address} has no workers after {wait:g} s; start "
            f"`dask worker {address}` on each machine (with kinabs installed).") from exc
