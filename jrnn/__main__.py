"""``python -m jrnn`` is the ``jrnn`` command."""

import sys

from jrnn.cli import main

sys.exit(main())
