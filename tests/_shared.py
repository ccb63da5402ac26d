"""Where the read-only shared material lives: ``../shared`` beside the checkout (as on CI),
or ``KINABS_SHARED`` if set."""

import os
from pathlib import Path

SHARED = Path(os.environ.get("KINABS_SHARED",
                             Path(__file__).resolve().parents[2] / "shared"))
