"""The ``netrun`` command: thin click commands over :class:`netrun.Net`.

Every user error is a :class:`NetrunError`, printed as one line
(``netrun: error: ...``) with exit code 2; ``--debug`` shows the traceback.
The commands live in ``netrun/commands``; this module is the group that holds them.
"""
import click

from . import __version__
from .commands import run as _run
from .commands.completion import completion_command
from .commands.export import export_command
from .commands.extract import extract_command
from .commands.pycaffe import pycaffe_command
from .commands.timing import time_command
from .commands.tools import compare_command, draw_command, gradcheck_command, summary_command
from .commands.train import test_command, train_command
from .errors import NetrunError


class NetrunGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NetrunError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"netrun: error: {e}", err=True)
            ctx.exit(2)
        except MemoryError:
            if ctx.params.get("debug"):
                raise
            click.echo("netrun: error: out of memory (the net's blobs do not fit)", err=True)
            ctx.exit(2)


@click.group(cls=NetrunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netrun")
@click.option("--debug", is_flag=True, help="Show the Python traceback of errors.")
@click.pass_context
def main(ctx, debug):
    """Run Caffe networks forward and backward, with Caffe's numbers.

    \b
    Examples:
      netrun forward models/lenet_deploy.prototxt
      netrun backward models/relu_demo.prototxt --set relu.relu_param.negative_slope=0.1
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _command in (_run.forward, _run.backward, _run.upgrade, _run.list_layers, train_command,
                 test_command, time_command, summary_command, draw_command, gradcheck_command,
                 compare_command, completion_command, export_command, extract_command,
                 pycaffe_command):
    main.add_command(_command)


def run():  # console-script entry point
    main(obj={})
