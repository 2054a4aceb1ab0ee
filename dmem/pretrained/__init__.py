"""Checkpoints shipped with dmem (``dmem eval --pretrained NAME``)."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def available():
    """Names of the shipped checkpoints."""
    return sorted(f[:-4] for f in os.listdir(HERE) if f.endswith(".npz"))


def path(name):
    """Path of the shipped checkpoint ``name``; ``ValueError`` listing the names if unknown."""
    names = available()
    if name not in names:
        raise ValueError(f"no pretrained model {name!r}; available: {', '.join(names) or 'none'}")
    return os.path.join(HERE, name + ".npz")
