"""pytest set-up for the whole checkout: the doctests of ``kinabs/`` and ``backends/``.

``backends/`` is installed as the package ``kinabs.backends`` (``package-dir`` in
pyproject.toml). pytest imports a file it collects by its place in the folder tree, so with
``--doctest-modules`` it would import ``backends/jax/_ops.py`` as ``backends.jax._ops``: a
second copy of ``kinabs.backends.jax._ops``, with its own module state (caches, registered
classes, failing ``isinstance`` checks) and, while the package's files move, imports that
resolve to a mix of both copies. No ``--import-mode`` helps: ``prepend``, ``append`` and
``importlib`` all derive the name ``backends.*`` from the folders (``importlib`` otherwise
makes up a unique name), and no ini option maps a folder to a package name.

So the hook below keeps pytest's own doctest collection (options, fixtures, reporting,
xdist) and changes one thing for files under ``backends/``: the module whose docstrings are
run is the installed one, imported by its dotted name ``kinabs.backends.<...>``, as users
and the tests import it. ``kinabs/`` needs nothing: its folder name is its package name.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
from _pytest.doctest import DoctestModule  # not re-exported by pytest; stable since 3.x

# As kinabs.backends.jax does on import, but before anything collected imports diffrax (and
# so equinox): in equinox's default "raise" mode its runtime checks are host callbacks,
# which neither jax.export nor JAX's persistent compilation cache can keep.
os.environ.setdefault("EQX_ON_ERROR", "nan")

BACKENDS = Path(__file__).resolve().parent / "backends"


def installed_name(path: Path) -> str:
    """``backends/jax/_ops.py`` -> ``kinabs.backends.jax._ops`` (``__init__.py``: the
    package itself)."""
    parts = path.resolve().relative_to(BACKENDS).with_suffix("").parts
    return ".".join(("kinabs", "backends", *(p for p in parts if p != "__init__")))


class InstalledDoctestModule(DoctestModule):
    """The doctests of a ``backends/`` file, run on ``kinabs.backends.<...>``."""

    def _getobj(self):
        name = installed_name(self.path)
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a collection error, as pytest reports its own imports
            raise self.CollectError(
                str(pytest.ExceptionInfo.from_current().getrepr(style="short"))) from exc
        if Path(module.__file__).resolve() != self.path.resolve():
            raise self.CollectError(f"{name} is imported from {module.__file__}, not from "
                                    f"{self.path}: another kinabs is installed ahead of "
                                    "this checkout (pip install -e . here).")
        return module


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    collected = yield
    if not file_path.resolve().is_relative_to(BACKENDS):
        return collected
    return [InstalledDoctestModule.from_parent(parent, path=file_path)
            if type(c) is DoctestModule else c for c in collected]


@pytest.fixture(scope="session", autouse=True)
def _jax_cache(tmp_path_factory):
    """Compiled and traced programs go to a per-run folder, never to ~/.cache (for the
    doctests that train as for the tests). The xdist workers of one run share it (their
    base folders are siblings), so a program one worker compiled is loaded by the other:
    the cache writes its entries by atomic rename and reads a vanished one as a miss."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "kinabs_jax_cache"
    folder.mkdir(mode=0o700, exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("KINABS_JAX_CACHE", str(folder))
    yield
    mp.undo()
