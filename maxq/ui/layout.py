"""
Where each step of a run goes in its drawing: a pure, deterministic layered
layout (no I/O, no Twisted).

Stages are columns groups, left to right in the order they were scheduled;
inside a stage, a step's layer is the length of the longest chain of
same-stage dependencies leading to it, so every edge points right.  The
order inside each column starts as the steps' creation order and is then
improved by a few barycenter sweeps (each node moves towards the mean
position of its neighbours in the columns already placed), which removes
most edge crossings.  Ties keep the previous order, so the same run always
gives the same picture.

A stage with more than C{GROUP_THRESHOLD} steps is drawn with the steps
that share a script (and a layer) folded into one group node, unless the
group is named in C{expanded}; edges between folded steps become one edge
between their groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NODE_WIDTH = 168
NODE_HEIGHT = 40
COLUMN_GAP = 64
ROW_GAP = 14
MARGIN = 24
# Room above the nodes for the stage names.
HEADER = 28
GROUP_THRESHOLD = 200
SWEEPS = 4


@dataclass
class Node:
    """
    One box of the drawing: a step, or a group of steps sharing a script.
    """

    key: str
    label: str
    stage: str
    status: str
    column: int = 0
    row: int = 0
    x: int = 0
    y: int = 0
    step_id: str | None = None
    members: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        return self.step_id is None


@dataclass
class Edge:
    source: str
    target: str
    path: str = ""


@dataclass
class StageBand:
    name: str
    status: str
    x: int
    width: int


@dataclass
class Layout:
    nodes: list[Node]
    edges: list[Edge]
    stages: list[StageBand]
    width: int
    height: int


def group_key(stage: str, name: str, layer: int) -> str:
    return f"group:{stage}/{name}/{layer}"


def _layers(steps: list[dict]) -> dict[str, int]:
    """
    Layer of each step inside its stage: 0 without same-stage dependencies,
    else one more than its deepest same-stage dependency.
    """
    stage_of = {s["id"]: s["stage"] for s in steps}
    deps = {s["id"]: [d for d in s.get("depends_on") or ()
                      if stage_of.get(d) == s["stage"]] for s in steps}
    layer: dict[str, int] = {}
    for start in deps:
        if start in layer:
            continue
        # Iterative depth-first walk (runs may have chains of thousands).
        stack = [(start, iter(deps[start]))]
        visiting = {start}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                visiting.discard(node)
                layer[node] = max((layer[d] + 1 for d in deps[node] if d in layer),
                                  default=0)
            elif child not in layer and child not in visiting:
                visiting.add(child)
                stack.append((child, iter(deps[child])))
    return layer


def _worst(statuses: dict[str, int]) -> str:
    for status in ("failed", "running", "paused", "pending", "cancelled", "completed"):
        if statuses.get(status):
            return status
    return "pending"


def layout(steps: list[dict], stages: list[dict] | None = None,
           expanded: frozenset[str] | set[str] = frozenset()) -> Layout:
    """
    Lay out C{steps} (store rows or dicts with C{id}, C{stage}, C{name},
    C{status}, C{depends_on}, in creation order).  C{stages} (name and
    status, in scheduling order) gives the column order; stages only named
    by steps follow in order of appearance.
    """
    stage_order = [s["name"] for s in stages or ()]
    stage_status = {s["name"]: s["status"] for s in stages or ()}
    for s in steps:
        if s["stage"] not in stage_status:
            stage_order.append(s["stage"])
            stage_status[s["stage"]] = "pending"
    sizes: dict[str, int] = {}
    for s in steps:
        sizes[s["stage"]] = sizes.get(s["stage"], 0) + 1
    layer = _layers(steps)

    # Nodes, folding big stages' steps into groups.
    nodes: dict[str, Node] = {}
    node_of: dict[str, str] = {}
    for s in steps:
        stage = s["stage"]
        key = group_key(stage, s["name"], layer[s["id"]])
        if sizes[stage] > GROUP_THRESHOLD and key not in expanded:
            group = nodes.get(key)
            if group is None:
                group = nodes[key] = Node(key=key, label=s["name"], stage=stage,
                                          status="pending")
            group.members.append(s["id"])
            group.counts[s["status"]] = group.counts.get(s["status"], 0) + 1
            node_of[s["id"]] = key
        else:
            key = "step:" + s["id"]
            nodes[key] = Node(key=key, label=s["id"], stage=stage, status=s["status"],
                              step_id=s["id"])
            node_of[s["id"]] = key
    for node in nodes.values():
        if node.is_group:
            node.status = _worst(node.counts)

    # Columns: the stages' layers, left to right.
    first_column: dict[str, int] = {}
    column = 0
    for stage in stage_order:
        first_column[stage] = column
        depth = max((layer[s["id"]] for s in steps if s["stage"] == stage), default=0)
        column += depth + 1
    columns: list[list[str]] = [[] for _ in range(max(column, 1))]
    placed: set[str] = set()
    for s in steps:
        key = node_of[s["id"]]
        if key not in placed:
            placed.add(key)
            columns[first_column[s["stage"]] + layer[s["id"]]].append(key)

    # Edges, one per pair of nodes.
    seen: set[tuple[str, str]] = set()
    edges: list[Edge] = []
    preds: dict[str, list[str]] = {k: [] for k in nodes}
    succs: dict[str, list[str]] = {k: [] for k in nodes}
    for s in steps:
        target = node_of[s["id"]]
        for dep in s.get("depends_on") or ():
            source = node_of.get(dep)
            if source is None or source == target or (source, target) in seen:
                continue
            seen.add((source, target))
            edges.append(Edge(source, target))
            preds[target].append(source)
            succs[source].append(target)

    _reduce_crossings(columns, preds, succs)

    # Coordinates.
    for c, keys in enumerate(columns):
        for r, key in enumerate(keys):
            node = nodes[key]
            node.column, node.row = c, r
            node.x = MARGIN + c * (NODE_WIDTH + COLUMN_GAP)
            node.y = MARGIN + HEADER + r * (NODE_HEIGHT + ROW_GAP)
    for edge in edges:
        a, b = nodes[edge.source], nodes[edge.target]
        x1, y1 = a.x + NODE_WIDTH, a.y + NODE_HEIGHT // 2
        x2, y2 = b.x, b.y + NODE_HEIGHT // 2
        bend = max((x2 - x1) // 2, 24)
        edge.path = f"M{x1} {y1} C{x1 + bend} {y1} {x2 - bend} {y2} {x2} {y2}"

    bands = []
    for stage in stage_order:
        start = first_column[stage]
        depth = max((layer[s["id"]] for s in steps if s["stage"] == stage), default=0)
        x = MARGIN + start * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP // 4
        width = (depth + 1) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP // 2
        bands.append(StageBand(stage, stage_status[stage], x, width))
    rows = max((len(keys) for keys in columns), default=0)
    width = 2 * MARGIN + len(columns) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP
    height = 2 * MARGIN + HEADER + max(rows, 1) * (NODE_HEIGHT + ROW_GAP)
    return Layout(list(nodes.values()), edges, bands, width, height)


def _reduce_crossings(columns: list[list[str]], preds: dict[str, list[str]],
                      succs: dict[str, list[str]]) -> None:
    """
    Barycenter sweeps, alternately left to right (by predecessors) and right
    to left (by successors), reordering each column in place.  A node with
    no neighbour on the side looked at keeps its place; sorting is stable.
    """
    position: dict[str, int] = {}
    for keys in columns:
        for i, key in enumerate(keys):
            position[key] = i
    for sweep in range(SWEEPS):
        forward = sweep % 2 == 0
        order = range(1, len(columns)) if forward else range(len(columns) - 2, -1, -1)
        neighbours = preds if forward else succs
        for c in order:
            keys = columns[c]

            def weight(key: str) -> float:
                near = neighbours[key]
                if not near:
                    return float(position[key])
                return sum(position[n] for n in near) / len(near)

            keys.sort(key=weight)
            for i, key in enumerate(keys):
                position[key] = i


def crossings(result: Layout) -> int:
    """
    How many pairs of edges between adjacent columns cross (for tests).
    """
    by_key = {n.key: n for n in result.nodes}
    spans = [(by_key[e.source], by_key[e.target]) for e in result.edges]
    count = 0
    for i, (a1, b1) in enumerate(spans):
        for a2, b2 in spans[i + 1:]:
            if a1.column == a2.column and b1.column == b2.column \
                    and b1.column == a1.column + 1:
                if (a1.row - a2.row) * (b1.row - b2.row) < 0:
                    count += 1
    return count
