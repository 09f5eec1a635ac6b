"""Extra click commands of the ``netrun`` CLI (registered at the end of netrun/cli.py)."""
