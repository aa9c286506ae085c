"""
The pools' routes (SPEC §6): C{GET /pools}, C{PUT /pools/{name}} (create or
resize) and C{DELETE /pools/{name}}; a mixin of L{maxq.api.app.Api}.
"""

from __future__ import annotations

from maxq.api.base import PREFIX, app
from maxq.api.http import Query, json_response, read_json


class PoolRoutes:
    """
    Pools are shared by every flow: only the operator sees and changes them.
    """

    @app.route(PREFIX + "/pools", methods=["GET"])
    async def list_pools(self, request):
        self._require_operator(request)
        Query(request)
        return json_response(request, 200, {"pools": await self.engine.list_pools()})

    @app.route(PREFIX + "/pools/<name>", methods=["PUT"])
    async def put_pool(self, request, name):
        self._require_operator(request)
        Query(request)
        body = read_json(request)
        return json_response(request, 200, await self.engine.put_pool(name, body))

    @app.route(PREFIX + "/pools/<name>", methods=["DELETE"])
    async def delete_pool(self, request, name):
        self._require_operator(request)
        Query(request)
        return json_response(request, 200, await self.engine.delete_pool(name))
