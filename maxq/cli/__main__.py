"""
C{python -m maxq.cli}: the same as the C{maxq} command.
"""

import sys

from maxq.cli import main

sys.exit(main())
