"""``python -m netrun.pycaffe SCRIPT.py [ARGS]`` (or ``-m MODULE``, ``-c CODE``)."""
import sys

from .runner import main

sys.exit(main(sys.argv[1:]))
