"""
The exit statuses of the C{maxq} command.
"""

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_ERROR = 2
EXIT_UNREACHABLE = 3
