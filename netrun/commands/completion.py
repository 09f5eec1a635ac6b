"""``netrun completion``: print the shell completion script (click's mechanism)."""
import os

import click
from click.shell_completion import get_completion_class

from ..errors import NetrunError

SHELLS = ("bash", "zsh", "fish")
PROG = "netrun"
COMPLETE_VAR = "_NETRUN_COMPLETE"


def completion_script(root, shell):
    """The script click would print for ``_NETRUN_COMPLETE=<shell>_source netrun``."""
    cls = get_completion_class(shell)
    return cls(root, {}, PROG, COMPLETE_VAR).source()


@click.command("completion", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shell", required=False, type=click.Choice(SHELLS))
@click.option("-q", "--quiet", is_flag=True,
              help="Accepted as by every command; the script is all this prints.")
@click.pass_context
def completion_command(ctx, shell, quiet):
    """Print the completion script of your shell (bash, zsh or fish; default: $SHELL).

    The script completes commands, options and file names.  It is click's
    completion: printing it is the same as `_NETRUN_COMPLETE=bash_source netrun`
    (zsh_source, fish_source).  Bash needs version 4.4 or later.

    \b
    Examples:
      eval "$(netrun completion bash)"                  # this bash session only
      netrun completion bash > ~/.netrun-complete.bash  # then, in ~/.bashrc:
                                                        #   . ~/.netrun-complete.bash
      netrun completion zsh > ~/.netrun-complete.zsh    # then, in ~/.zshrc:
                                                        #   . ~/.netrun-complete.zsh
      netrun completion fish > ~/.config/fish/completions/netrun.fish
    """
    if shell is None:
        shell = os.path.basename(os.environ.get("SHELL", ""))
        if shell not in SHELLS:
            raise NetrunError("cannot tell your shell from $SHELL "
                              f"({os.environ.get('SHELL') or 'unset'}): name it, "
                              "e.g. netrun completion bash")
    click.echo(completion_script(ctx.find_root().command, shell))
