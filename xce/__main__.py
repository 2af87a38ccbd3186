"""``python -m xce``: the self-check across the installed array libraries."""

import sys

from ._selfcheck import main

sys.exit(main())
