"""``netrun pycaffe SCRIPT.py [ARGS]``: run an unmodified pycaffe script on netrun.

The work is in :mod:`netrun.pycaffe.runner`; ``python -m netrun.pycaffe`` is the same.
"""
import os
import sys

import click


@click.command("pycaffe", context_settings={"ignore_unknown_options": True,
                                            "allow_interspersed_args": False})
@click.option("-q", "--quiet", is_flag=True,
              help="No solver log and no netrun notes (sets GLOG_minloglevel=2, as for Caffe).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def pycaffe_command(quiet, args):
    """Run a pycaffe script with `import caffe` resolving to netrun.

    \b
    netrun pycaffe SCRIPT.py [ARGS...]   run a script as __main__
    netrun pycaffe -m MODULE [ARGS...]   run a module
    netrun pycaffe -c CODE [ARGS...]     run a string of code

    caffe, caffe.io, caffe.proto.caffe_pb2, caffe.net_spec, caffe.draw, ... are
    netrun's modules for that process only (nothing is installed, so a real Caffe
    keeps working elsewhere).  Python layers named in prototxts are allowed, as in
    pycaffe.  netrun's options go before the script; everything after it is the
    script's.  The exit status is the script's.

    \b
    Examples:
      netrun pycaffe classify.py cat.jpg out.npy --gpu 0
      netrun pycaffe -q -m unittest discover -s caffe/python/caffe/test
    """
    from ..pycaffe.runner import main
    if quiet:
        os.environ["GLOG_minloglevel"] = "2"
    if not args:
        raise click.UsageError("give a script (or -m MODULE, -c CODE) to run")
    code = main(list(args))
    if code:
        sys.exit(code)
