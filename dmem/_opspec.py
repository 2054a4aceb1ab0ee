"""The table of memory operations: names, argument names, axes and outputs.

One entry per operation of the design contract.  ``dmem.ops``, the reference
and the compiled wrappers all read this table, so that the three agree on the
names and order of every argument.  Axis letters: B batch, N memory slots,
W word size, H heads, R read heads, S shift width (odd).
"""

from collections import namedtuple

OpSpec = namedtuple("OpSpec", "name module inputs outputs odd_shift")
OpSpec.__doc__ = """An operation: its module, ``(name, axes)`` of inputs and outputs,
and whether its ``shifts`` argument must have odd width."""


def _op(name, module, inputs, outputs, odd_shift=False):
    return OpSpec(name, module, tuple(inputs), tuple(outputs), odd_shift)


OPS = {
    spec.name: spec
    for spec in [
        _op("content_weights", "addressing",
            [("memory", "BNW"), ("keys", "BHW"), ("strengths", "BH")],
            [("weights", "BHN")]),
        _op("shift", "addressing",
            [("weights", "BHN"), ("shifts", "BHS")],
            [("weights", "BHN")], odd_shift=True),
        _op("sharpen", "addressing",
            [("weights", "BHN"), ("gamma", "BH")],
            [("weights", "BHN")]),
        _op("ntm_address", "addressing",
            [("memory", "BNW"), ("keys", "BHW"), ("strengths", "BH"), ("gates", "BH"),
             ("shifts", "BHS"), ("gamma", "BH"), ("weights_prev", "BHN")],
            [("weights", "BHN")], odd_shift=True),
        _op("read", "memory",
            [("memory", "BNW"), ("weights", "BHN")],
            [("reads", "BHW")]),
        _op("write", "memory",
            [("memory", "BNW"), ("weights", "BHN"), ("erase", "BHW"), ("add", "BHW")],
            [("memory", "BNW")]),
        _op("usage", "allocation",
            [("usage_prev", "BN"), ("write_weights_prev", "BN"),
             ("read_weights_prev", "BRN"), ("free_gates", "BR")],
            [("usage", "BN")]),
        _op("allocation", "allocation",
            [("usage", "BN")],
            [("allocation", "BN")]),
        _op("precedence", "linkage",
            [("precedence_prev", "BN"), ("write_weights", "BN")],
            [("precedence", "BN")]),
        _op("link", "linkage",
            [("link_prev", "BNN"), ("write_weights", "BN"), ("precedence_prev", "BN")],
            [("link", "BNN")]),
        _op("temporal_weights", "linkage",
            [("link", "BNN"), ("read_weights_prev", "BRN")],
            [("forward_weights", "BRN"), ("backward_weights", "BRN")]),
        _op("link_step", "linkage",
            [("link_prev", "BNN"), ("precedence_prev", "BN"), ("write_weights", "BN"),
             ("read_weights_prev", "BRN")],
            [("link", "BNN"), ("precedence", "BN"), ("forward_weights", "BRN"),
             ("backward_weights", "BRN")]),
    ]
}

MODULES = ("addressing", "memory", "allocation", "linkage")
