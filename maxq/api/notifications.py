"""
The notification routes (SPEC §8): a run's deliveries, and sending one
again.  Operator only; what is sent where comes from flow.yaml and the
server's environment, never from a request.
"""

from __future__ import annotations

from maxq import notify
from maxq.api.base import PREFIX, app
from maxq.api.http import Query, json_response


class NotificationRoutes:
    """
    C{dispatcher} (L{maxq.notify.Dispatcher}) is woken after a retry; set
    by the service.
    """

    dispatcher = None

    @app.route(PREFIX + "/runs/<run_id>/notifications", methods=["GET"])
    async def list_notifications(self, request, run_id):
        self._require_operator(request)
        Query(request)
        deliveries = await notify.run_deliveries(self.store, run_id)
        return json_response(request, 200, {"deliveries": deliveries})

    @app.route(PREFIX + "/notifications/<delivery_id>/retry", methods=["POST"])
    async def retry_notification(self, request, delivery_id):
        self._require_operator(request)
        Query(request)
        delivery = await notify.retry_delivery(self.store, delivery_id,
                                               int(self.clock.seconds() * 1000))
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return json_response(request, 202, delivery)
