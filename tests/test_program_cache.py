"""The key of the JAX disk cache of traced programs: it covers every source file that shapes
a program, so that an edited, renamed or added file never loads a stale program."""

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("diffrax")
pytest.importorskip("optax")

from kinabs.backends.jax import _program_cache as pc  # noqa: E402

#: The modules a traced training program is made of.
TRAINING_PATH = [
    "kinabs._losses", "kinabs._problem", "kinabs._stages", "kinabs._lowering.codegen",
    "kinabs._lowering.vectorize", "kinabs._lowering.ops", "kinabs.backends.jax._train",
    "kinabs.backends.jax._simulate", "kinabs.backends.jax._backend",
    "kinabs.backends.jax._ops", "kinabs.backends.jax._program_cache",
]


@pytest.fixture
def tree(tmp_path):
    """A copy of the hashed package folders, to edit freely."""
    copies = []
    for folder in pc.package_folders():
        copy = tmp_path / str(len(copies)) / folder.name
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("__pycache__"))
        copies.append(copy)
    return copies


@pytest.mark.parametrize("module", TRAINING_PATH)
def test_every_module_of_the_training_path_is_hashed(module):
    hashed = {path.resolve() for _, path in pc.source_files(pc.package_folders())}
    assert Path(importlib.import_module(module).__file__).resolve() in hashed


def test_a_copy_hashes_the_same(tree):
    assert pc.source_digest(tree) == pc.source_digest(pc.package_folders())


def test_any_edited_file_gives_a_new_digest(tree):
    seen = {pc.source_digest(tree)}
    files = pc.source_files(tree)
    assert len(files) > len(TRAINING_PATH)
    for _, path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        seen.add(pc.source_digest(tree))
        path.write_bytes(original)
    assert len(seen) == len(files) + 1  # each edit its own digest, none the original


def test_a_renamed_or_added_file_gives_a_new_digest(tree):
    before = pc.source_digest(tree)
    train = tree[-1] / "_train.py"
    train.rename(tree[-1] / "_training.py")
    renamed = pc.source_digest(tree)
    (tree[0] / "_new.py").write_text("")
    added = pc.source_digest(tree)
    assert len({before, renamed, added}) == 3


def test_program_key_changes_with_each_part_and_the_sources(monkeypatch):
    parts = ["source", np.arange(3.0), 25, None]
    key = pc.program_key(*parts)
    assert key == pc.program_key(*parts) and len(key) == 32
    for i, other in enumerate(["sourcE", np.arange(3), 26, 0.0]):
        changed = list(parts)
        changed[i] = other
        assert pc.program_key(*changed) != key, i
    assert pc.program_key(*parts[:-1]) != key
    assert pc.program_key(np.zeros((2, 3))) != pc.program_key(np.zeros((3, 2)))
    monkeypatch.setattr(pc, "_installed_digest", lambda: b"another kinabs")
    assert pc.program_key(*parts) != key


def test_program_key_covers_the_environment_and_every_data_bit(monkeypatch):
    data = np.array([0.5, 1.0])
    key = pc.program_key(data)
    nudged = data.copy()
    nudged[1] += 1e-7  # a data value nudged: another program (the data are in it)
    assert pc.program_key(nudged) != key
    env = pc.environment()
    for name, other in [("platform", "gpu"), ("device_kind", "NVIDIA H100"),
                        ("jaxlib", "0.0.1"), ("EQX_ON_ERROR", "raise")]:
        monkeypatch.setattr(pc, "environment", lambda name=name, other=other:
                            dict(env, **{name: other}))
        assert pc.program_key(data) != key, name
