"""``python -m em_tutorial``: the ``em-tutorial`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
