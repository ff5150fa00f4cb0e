"""`python -m tiec` runs the command-line interface."""
import sys

from tiec.cli import main

sys.exit(main())
