"""``python -m skyinfer.cli``: the same as the ``skyinfer`` console script."""

import sys

from skyinfer.cli import main

sys.exit(main())
