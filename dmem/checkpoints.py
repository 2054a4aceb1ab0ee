"""Checkpoints: one ``.npz`` file of arrays with a JSON header, written atomically.

A checkpoint holds a model's kind and configuration, its parameters and
buffers, and optionally any further named arrays (optimizer state, RNG state)
and JSON metadata (step counters, training settings).  The JSON travels inside
the archive as the UTF-8 bytes of the array ``__meta__``, so a checkpoint is a
single file.  It is read with ``allow_pickle=False``: loading a checkpoint never
runs code.

Writes go to a temporary file in the same folder, flushed to disk, then
renamed over the target, so an interrupted save leaves the previous
checkpoint intact.  A truncated, corrupt or foreign file raises
:class:`CheckpointError` (a ``ValueError``) saying what is wrong.
"""

import json
import os
import tempfile
import zipfile
from collections import namedtuple

import numpy as np

FORMAT = "dmem-checkpoint"
VERSION = 1
_GROUPS = ("params", "buffers", "arrays")

Checkpoint = namedtuple("Checkpoint", "kind config params buffers arrays metadata")
Checkpoint.__doc__ = """A loaded checkpoint: ``kind`` (e.g. ``"ntm"``), ``config`` (dict),
``params``, ``buffers`` and ``arrays`` (dicts of arrays) and ``metadata`` (dict)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one."""


def _check_names(group, mapping):
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise TypeError(f"{group} must be a dict of arrays, got {type(mapping).__name__}")
    out = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{group}: array names must be non-empty strings without '/', got {name!r}")
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"{group}[{name!r}] has dtype object; checkpoints hold numeric arrays only")
        out[name] = array
    return out


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path, kind, config, params, buffers=None, arrays=None, metadata=None):
    """Write a checkpoint to ``path`` atomically; return the path.

    ``config`` and ``metadata`` must be JSON-serialisable dicts.
    """
    path = os.fspath(path)
    groups = {
        "params": _check_names("params", params),
        "buffers": _check_names("buffers", buffers),
        "arrays": _check_names("arrays", arrays),
    }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": config,
        "metadata": metadata or {},
        "names": {g: sorted(groups[g]) for g in _GROUPS},
    }
    try:
        header = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint config and metadata must be plain JSON: {exc}") from None
    payload = {"__meta__": np.frombuffer(header.encode("utf-8"), dtype=np.uint8)}
    for g in _GROUPS:
        for name, array in groups[g].items():
            payload[f"{g}/{name}"] = array

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dmem-", suffix=".npz.tmp", dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the permissions of any new file.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = set(archive.files)
            if "__meta__" not in files:
                raise CheckpointError(f"{path!r} is not a dmem checkpoint (no header)")
            meta = json.loads(archive["__meta__"].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CheckpointError(f"{path!r} is not a dmem checkpoint (format {meta.get('format')!r})")
            if meta.get("version") != VERSION:
                raise CheckpointError(
                    f"{path!r} is a dmem checkpoint of version {meta.get('version')!r}; "
                    f"this dmem reads version {VERSION}"
                )
            groups = {}
            for g in _GROUPS:
                groups[g] = {}
                for name in meta["names"][g]:
                    key = f"{g}/{name}"
                    if key not in files:
                        raise CheckpointError(f"{path!r} is incomplete: array {key!r} is missing")
                    groups[g][name] = archive[key]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path!r} is corrupt or truncated: {exc}") from None
    return Checkpoint(
        meta["kind"], meta["config"], groups["params"], groups["buffers"], groups["arrays"],
        meta["metadata"],
    )
