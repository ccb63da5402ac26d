"""``python -m kinabs`` runs the ``kinabs`` command."""

import sys

from kinabs._cli import main

sys.exit(main())
