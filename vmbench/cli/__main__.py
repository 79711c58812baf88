"""`python -m vmbench.cli ARGS` runs the command line (tests and subprocess launchers use it)."""
from . import main

main()
