"""
The DAG's SVG markup, written directly (a run may have thousands of nodes
and edges, where a template per node costs more than the layout).  Every
value that comes from a run goes through C{markupsafe.escape}; the result
is C{Markup}, which the templates insert as it is.  Pure functions.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from markupsafe import Markup, escape

from maxq.ui.layout import NODE_HEIGHT, NODE_WIDTH, Edge, Node
from maxq.ui.views import mark


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def node(n: Node, run_id: str, names: dict[str, str],
         expanded: frozenset[str] = frozenset()) -> str:
    """
    One node: a link to the step (or, for a group, to the run page with
    the group unfolded), its status as a mark and as text.
    """
    run = quote(run_id, safe="")
    status = escape(n.status)
    stack = ' class="stack"' if n.is_group else ""
    box = f'<rect width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6"{stack}/>'
    if not n.is_group:
        step = escape(n.step_id)
        href = f"/ui/runs/{run}/steps/{quote(n.step_id, safe='')}"
        title = f"{step} ({escape(names.get(n.step_id, ''))}): {status}"
        return (f'<g class="node status-{status}" data-step-id="{step}" '
                f'data-status="{status}" transform="translate({n.x},{n.y})">'
                f'<a href="{href}"><title>{title}</title>{box}'
                f'<text x="10" y="17" class="label">{mark(n.status)} '
                f'{escape(_short(n.label, 20))}</text>'
                f'<text x="10" y="32" class="sub">{status}</text></a></g>')
    query = urlencode([("expand", k) for k in sorted(expanded | {n.key})])
    counts = " ".join(f"{mark(s)}{c}" for s, c in sorted(n.counts.items()))
    size = len(n.members)
    return (f'<g class="node group status-{status}" data-group="{escape(n.key)}" '
            f'data-status="{status}" data-members="{size}" '
            f'transform="translate({n.x},{n.y})">'
            f'<a href="/ui/runs/{run}?{escape(query)}"><title>{size} steps of '
            f'{escape(n.label)}: click to unfold</title>{box}'
            f'<text x="10" y="17" class="label">{mark(n.status)} '
            f'{escape(_short(n.label, 12))} \u00d7{size}</text>'
            f'<text x="10" y="32" class="sub">{escape(counts)}</text></a></g>')


def nodes(items: list[Node], run_id: str, names: dict[str, str],
          expanded: frozenset[str] = frozenset()) -> Markup:
    return Markup("\n".join(node(n, run_id, names, expanded) for n in items))


def edges(items: list[Edge]) -> Markup:
    return Markup("".join(
        f'<path d="{e.path}" data-from="{escape(e.source)}" data-to="{escape(e.target)}" '
        f'marker-end="url(#arrow)"/>' for e in items))
