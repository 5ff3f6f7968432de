"""``python -m pytest_mgpu.cli``: the ``pytest-mgpu`` command."""

import sys

from . import main

sys.exit(main())
