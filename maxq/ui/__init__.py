"""
The web UI (SPEC §9): server-rendered pages under C{/ui/}, served by the
API's Klein app through the L{UiRoutes} mixin of L{maxq.api.app.Api}.
Templates and static files (htmx and its SSE extension, vendored, and our
own small scripts) ship inside this package.
"""

from maxq.ui.actions import UiActions


class UiRoutes(UiActions):
    """
    Every route of the UI: sessions and static files (L{maxq.ui.base}),
    pages and fragments (L{maxq.ui.pages}), changes (L{maxq.ui.actions}).
    """


__all__ = ["UiRoutes"]
