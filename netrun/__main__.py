"""``python -m netrun ...`` is the ``netrun`` command."""
from .cli import run

run()
