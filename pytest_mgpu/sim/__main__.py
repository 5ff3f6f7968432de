"""``python -m pytest_mgpu.sim --model DIR --tp N --pp N --port P``: start the simulated engine's server."""

import sys

from .server import main

sys.exit(main())
