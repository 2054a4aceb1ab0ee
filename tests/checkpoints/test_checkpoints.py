"""Checkpoint files: round trip, atomic writes, refusal of bad files."""

import json
import os
import zipfile

import numpy as np
import pytest

from dmem.checkpoints import CheckpointError, load_checkpoint, save_checkpoint


def _sample(rng):
    params = {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4).astype(np.float32)}
    buffers = {"memory_init": rng.standard_normal((5, 2))}
    arrays = {"rng_state": np.arange(6, dtype=np.uint64), "adam.m.W": np.zeros((3, 4))}
    return params, buffers, arrays


def test_round_trip_is_exact(tmp_path):
    params, buffers, arrays = _sample(np.random.default_rng(0))
    path = tmp_path / "model.npz"
    save_checkpoint(path, "ntm", {"memory_slots": 8, "controller": "lstm"}, params, buffers, arrays,
                    {"step": 12})
    ck = load_checkpoint(path)
    assert ck.kind == "ntm"
    assert ck.config == {"memory_slots": 8, "controller": "lstm"}
    assert ck.metadata == {"step": 12}
    for mine, theirs in ((params, ck.params), (buffers, ck.buffers), (arrays, ck.arrays)):
        assert sorted(mine) == sorted(theirs)
        for k in mine:
            assert theirs[k].dtype == mine[k].dtype
            np.testing.assert_array_equal(theirs[k], mine[k])


def test_overwrite_leaves_no_temporary_files(tmp_path):
    params, _, _ = _sample(np.random.default_rng(1))
    path = tmp_path / "m.npz"
    save_checkpoint(path, "dnc", {}, params)
    save_checkpoint(path, "dnc", {"x": 1}, params)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    assert load_checkpoint(path).config == {"x": 1}


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    params, _, _ = _sample(np.random.default_rng(2))
    path = tmp_path / "m.npz"
    save_checkpoint(path, "ntm", {"v": 1}, params)
    with pytest.raises(TypeError, match="plain JSON"):
        save_checkpoint(path, "ntm", {"v": object()}, params)
    with pytest.raises(TypeError, match="numeric arrays"):
        save_checkpoint(path, "ntm", {"v": 2}, {"W": np.array([object()])})
    assert load_checkpoint(path).config == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_truncated_file_is_refused(tmp_path):
    params, _, _ = _sample(np.random.default_rng(3))
    path = tmp_path / "m.npz"
    save_checkpoint(path, "ntm", {}, params)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_and_foreign_files_are_refused(tmp_path):
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    foreign = tmp_path / "f.npz"
    np.savez(foreign, W=np.ones(3))
    with pytest.raises(CheckpointError, match="not a dmem checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")


def test_pickled_arrays_are_never_loaded(tmp_path):
    path = tmp_path / "evil.npz"
    meta = {"format": "dmem-checkpoint", "version": 1, "kind": "ntm", "config": {},
            "metadata": {}, "names": {"params": ["W"], "buffers": [], "arrays": []}}
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             **{"params/W": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_array_is_reported(tmp_path):
    params, _, _ = _sample(np.random.default_rng(4))
    path = tmp_path / "m.npz"
    save_checkpoint(path, "ntm", {}, params)
    # Rewrite the archive without one of the arrays named in the header.
    out = tmp_path / "cut.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if item.filename != "params/b.npy":
                dst.writestr(item, src.read(item.filename))
    with pytest.raises(CheckpointError, match="'params/b' is missing"):
        load_checkpoint(out)


def test_future_version_is_refused(tmp_path):
    path = tmp_path / "v2.npz"
    meta = {"format": "dmem-checkpoint", "version": 99, "kind": "ntm", "config": {},
            "metadata": {}, "names": {"params": [], "buffers": [], "arrays": []}}
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


def test_bad_array_names(tmp_path):
    with pytest.raises(ValueError, match="without '/'"):
        save_checkpoint(tmp_path / "x.npz", "ntm", {}, {"a/b": np.ones(2)})


def test_checkpoint_has_the_permissions_of_a_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.npz", "ntm", {}, {"W": np.ones(2)})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
