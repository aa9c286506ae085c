"""
The twistd plugin: C{twistd -n maxq [options]}.

This module names C{maxq.tap} as a string and imports nothing else.  twistd
imports every plugin module while it builds its option list, before it has
installed the reactor chosen with C{--reactor}; anything here that imported
the reactor (C{klein} does, at import time) would make that option fail with
"reactor already installed".
"""

from twisted.application.service import ServiceMaker

maxq_service_maker = ServiceMaker(
    "MaxQ",
    "maxq.tap",
    "MaxQ workflow server: runs DAG workflows of shell scripts over an HTTP API",
    "maxq",
)
