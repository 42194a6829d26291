"""POST /v1/messages/count_tokens: the upstream's exact count when it offers one (llama.cpp,
vLLM), else the local estimate. Never an upstream model call."""

from __future__ import annotations

from clasp.pipeline.chain import UpstreamChain, routes_for
from clasp.pipeline.wire import JSON_HEADER, invalid, json_bytes, parse_body, send_error
from clasp.routing.providers import Router
from clasp.server.http import Request, Responder
from clasp.translate.errors import InvalidRequest, ProxyError
from clasp.translate.request import translate_request


class CountTokens:
    def __init__(self, router: Router, chain: UpstreamChain, limiter=None, access=None) -> None:
        self.router = router
        self.chain = chain
        self.limiter = limiter
        self.access = access

    async def handle(self, req: Request, resp: Responder, client_id: str | None = None, key=None) -> None:
        """client_id: the rate-limit key (the peer address by default); the same bucket as
        /v1/messages, and so is the client key's own rate limit (``key``)."""
        headers = [JSON_HEADER]
        try:
            if self.limiter is not None:
                headers.extend(await self.limiter.admit(req.client if client_id is None else client_id))
            if self.access is not None and key is not None and key.rate_limit:
                headers.extend(await self.access.admit(key))
        except ProxyError as err:
            await send_error(resp, err)
            return
        try:
            body = parse_body(req.body)
            if not isinstance(body.get("messages"), list):
                raise InvalidRequest("messages: field required (a list of messages)")
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise InvalidRequest("model: field required")
            tokens = await self._count(body)
        except InvalidRequest as e:
            await send_error(resp, invalid(str(e)))
            return
        except ProxyError as err:  # a model this proxy does not offer
            await send_error(resp, err)
            return
        await resp.send(200, headers, json_bytes({"input_tokens": tokens}))

    async def _count(self, body: dict) -> int:
        """Translated as /v1/messages would be (the same validation: a malformed body is a 400 on
        both), then counted by the upstream when it can, else estimated."""
        route = routes_for(self.router, body["model"])[0]  # the same answer as /v1/messages
        servers = self.chain.servers
        server = await servers.info(route.target)
        upstream_body, ctx = translate_request(body, route.model, self.chain.caps_for(route, server))
        exact = None
        if server.counts_tokens:
            exact = await servers.count_tokens(route.target, server, upstream_body)
        return ctx.estimated_input_tokens if exact is None else exact
