"""`python -m masktfx.cli`: the `masktfx` command."""

import sys

from masktfx.cli import main

sys.exit(main())
