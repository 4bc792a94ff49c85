"""Run the command line as ``python -m dpcharge``."""

import sys

from dpcharge.cli import main

sys.exit(main())
