"""Tools Caffe never had: a per-layer summary, a graph drawing, a gradient checker
and an array comparer.  The click commands live in :mod:`netrun.commands.tools`;
these modules hold the logic and work on a built :class:`netrun.Net`.
"""
from .compare import compare_arrays, compare_files  # noqa: F401
from .draw import render, to_dot  # noqa: F401
from .gradcheck import check_layer, check_net  # noqa: F401
from .summary import layer_macs, summarize  # noqa: F401
