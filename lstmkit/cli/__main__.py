"""``python -m lstmkit.cli``: the ``lstmkit`` command."""

import sys

from . import main

sys.exit(main())
