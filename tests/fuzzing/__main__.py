"""`python -m tests.fuzzing --n N`: a fuzz campaign (see `campaign.py`)."""
from __future__ import annotations

import sys

from .campaign import main

sys.exit(main())
