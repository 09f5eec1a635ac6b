"""``netrun pycaffe SCRIPT.py [ARGS]``: run an unmodified pycaffe script on netrun.

The work is in :mod:`netrun.pycaffe.runner`; ``python -m netrun.pycaffe`` is the same.
"""
import sys

import click


@click.command("pycaffe", context_settings={"ignore_unknown_options": True,
                                            "allow_interspersed_args": False,
                                            "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def pycaffe_command(args):
    """Run a pycaffe script with `import caffe` resolving to netrun.

    \b
    netrun pycaffe SCRIPT.py [ARGS...]   run a script as __main__
    netrun pycaffe -m MODULE [ARGS...]   run a module (e.g. -m unittest discover -s tests)
    netrun pycaffe -c CODE [ARGS...]     run a string of code

    caffe, caffe.io, caffe.proto.caffe_pb2, caffe.net_spec, caffe.draw, ... are
    netrun's modules for that process only (nothing is installed, so a real Caffe
    keeps working elsewhere).  Python layers named in prototxts are allowed, as in
    pycaffe.  The script's exit status is netrun's.
    """
    from ..pycaffe.runner import main
    code = main(list(args))
    if code:
        sys.exit(code)
