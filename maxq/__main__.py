"""
C{python -m maxq}: the same as the C{maxq} command.
"""

import sys

from maxq.cli import main

sys.exit(main())
