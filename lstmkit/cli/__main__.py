"""``python -m lstmkit.cli``: the ``lstmkit`` command."""

import sys

from . import main

if __name__ == "__main__":        # importing the module (e.g. to document it) runs nothing
    sys.exit(main())
