"""A 2xx upstream response -> the Anthropic response the client gets: translated whole, or
relayed as a stream one upstream read at a time."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from clasp.ops.logs import DebugLog
from clasp.pipeline.exchange import CachedResponse, Exchange
from clasp.pipeline.wire import JSON_HEADER, json_bytes, scrub
from clasp.server.http import Responder
from clasp.translate.capabilities import Capabilities
from clasp.translate.context import RequestContext
from clasp.translate.errors import ProxyError, map_transport_error, map_upstream_error
from clasp.translate.jsontext import nesting_exceeds
from clasp.translate.response import translate_response
from clasp.translate.sse import DEFAULT_MAX_EVENT_BYTES, SSEEventTooLarge, SSEParser, encode_event, encode_events
from clasp.translate.stream import AnthropicEventStream, StreamTranslator, events_from_message
from clasp.upstream.client import UpstreamError, UpstreamResponse

log = logging.getLogger("clasp")

SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
               ("x-accel-buffering", "no")]
_PING = encode_event({"type": "ping"})
_DONE = "[DONE]"
# Seconds of upstream silence after finish_reason (usage and [DONE] not yet seen) before the
# stream is finalized anyway (PROTOCOL §3.3).
_FINISH_GRACE_S = 5.0


async def send_cached(resp: Responder, ex: Exchange, hit: CachedResponse, headers: list) -> None:
    """Answer from the response cache, and book it."""
    ex.cache, ex.status = "HIT", 200
    ex.provider, ex.upstream_model = hit.provider, hit.upstream_model
    await resp.send(200, [JSON_HEADER, *headers, ("x-clasp-provider", hit.provider), ("x-clasp-cache", "HIT")],
                    hit.body)


def book_route(ex: Exchange, route, cache_key: str | None, headers: list) -> None:
    """The route that answered: booked, and named in the response headers (appended)."""
    ex.provider, ex.upstream_model, ex.api = route.target.name, route.model, route.api
    headers.append(("x-clasp-provider", route.target.name))
    if cache_key is not None:
        ex.cache = "MISS"
        headers.append(("x-clasp-cache", "MISS"))


class Relay:
    def __init__(self, *, clock: Callable[[], float], ping_interval: float, cache=None,
                 debug_log: DebugLog | None = None, secret_variants: list[str] = (),
                 max_sse_event_size: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.clock = clock
        self.ping_interval = ping_interval
        self.max_sse_event_size = max_sse_event_size
        self.cache = cache
        self.debug_log = debug_log
        self.secret_variants = list(secret_variants)

    async def whole(self, upstream: UpstreamResponse, resp: Responder, ctx: RequestContext,
                    caps: Capabilities, ex: Exchange, headers: list, cache_key: str | None,
                    api: str = "chat", translate: Callable[[dict], dict] | None = None) -> None:
        """`translate` (web search) replaces the dialect's response translator."""
        try:
            raw = await upstream.read()
        except UpstreamError as e:
            raise map_transport_error(e, ex.provider) from None
        finally:
            upstream.close()
        if self.debug_log:
            self.debug_log.upstream_response(upstream.status, upstream.headers, raw)
        ex.ttft = self.clock() - ex.started
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            raise ProxyError(502, "api_error", f"{ex.provider}: upstream returned a non-JSON body",
                             {}, True) from None
        except RecursionError:
            raise _too_deep(ex.provider) from None
        if nesting_exceeds(data):
            raise _too_deep(ex.provider)
        responses = api == "responses"
        if not responses:
            if "error" in data and not data.get("choices"):
                raise scrub(map_upstream_error(upstream.status, upstream.headers, raw, ex.provider, ctx),
                            self.secret_variants)
            choices = data.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                # Not an answer at all: never hand the client an empty end_turn message for it.
                raise ProxyError(502, "api_error", f"{ex.provider}: upstream returned a 2xx response without "
                                 f"a \"choices\" list of answers", {}, False)
        try:
            if translate is not None:
                try:
                    message = translate(data)
                except ProxyError as err:  # a failed response under a 2xx
                    raise scrub(err, self.secret_variants) from None
            elif responses:
                from clasp.translate.responses_response import translate_responses_response
                try:
                    message = translate_responses_response(data, ctx, caps)
                except ProxyError as err:  # a failed response under a 2xx
                    raise scrub(err, self.secret_variants) from None
            else:
                message = translate_response(data, ctx, caps)
            if ex.stream:
                # the upstream ignored stream:true (or is configured not to stream): synthesize events
                translator = StreamTranslator(ctx, caps, message_id=message["id"])
                body = encode_events(translator.start() + events_from_message(message))
            else:
                body = json_bytes(message)
        except RecursionError:  # e.g. tool arguments that parse into thousands of levels
            raise _too_deep(ex.provider) from None
        ex.book(message.get("usage", {}), sum(1 for b in message["content"] if b.get("type") == "tool_use"))
        ex.status = 200
        if ex.stream:
            await resp.start(200, [*SSE_HEADERS, *headers])
            if self.debug_log:
                self.debug_log.translated_response(body)
            resp.write(body)
            await resp.end()
            return
        if self.debug_log:
            self.debug_log.translated_response(body)
        if cache_key is not None and self.cache is not None:
            await self.cache.put(cache_key, CachedResponse(body, ex.provider, ex.upstream_model))
        await resp.send(200, [JSON_HEADER, *headers], body)

    async def stream(self, upstream: UpstreamResponse, resp: Responder, ctx: RequestContext,
                     caps: Capabilities, ex: Exchange, headers: list, api: str = "chat",
                     translator: AnthropicEventStream | None = None) -> None:
        """Relay upstream SSE as Anthropic SSE: each upstream read is translated, written and
        drained before the next read, so memory stays bounded and events flow as they arrive.
        Chat Completions chunks or Responses API events: the same Anthropic events either way.
        A given `translator` (web search) replaces the dialect's."""
        if translator is None:
            if api == "responses":
                from clasp.translate.responses_stream import ResponsesStreamTranslator
                translator = ResponsesStreamTranslator(ctx, caps, provider=ex.provider)
            else:
                translator = StreamTranslator(ctx, caps, provider=ex.provider)
        parser = SSEParser(self.max_sse_event_size)
        await resp.start(200, [*SSE_HEADERS, *headers])
        ex.status = 200
        debug = self.debug_log
        out = encode_events(translator.start())
        if debug:
            debug.translated_response(out)
        resp.write(out)

        def on_interrupt(error_type: str, message: str) -> bytes:
            # the server is stopping and cannot wait any longer: a final error event, not a cut
            return encode_events(translator.fail({"type": error_type, "message": message}))

        resp.on_interrupt = on_interrupt
        await resp.drain()
        clock = self.clock
        state = {"last": clock()}
        pinger = asyncio.ensure_future(self._ping_loop(resp, state))
        failed = False
        chunks = upstream.iter_chunks()
        try:
            while True:
                try:
                    if translator.finish_reason is None:
                        data = await chunks.__anext__()
                    else:
                        # finish_reason seen, usage not yet: some servers then go silent without
                        # [DONE] or EOF; finalize after a short silence (PROTOCOL §3.3)
                        data = await asyncio.wait_for(chunks.__anext__(), _FINISH_GRACE_S)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    log.info("%s: no [DONE] or usage %gs after finish_reason; finishing the stream",
                             ex.provider, _FINISH_GRACE_S)
                    upstream.close()  # half-read: never pooled
                    break
                if debug:
                    debug.upstream_response(upstream.status, upstream.headers, data)
                try:
                    payloads = parser.feed(data)
                except SSEEventTooLarge as e:
                    # an upstream sending one line or event without end must not grow the proxy
                    upstream.close()
                    events = _translate_payloads(e.payloads, translator, ex.provider)
                    events += translator.fail(ProxyError(
                        502, "api_error", f"{ex.provider}: {e} (-max-sse-event-size / CLASP_MAX_SSE_EVENT_SIZE)"))
                    failed = _ended_with_error(events, ex)
                    out = encode_events(events)
                    if debug:
                        debug.translated_response(out)
                    resp.write(out)
                    break
                events = _translate_payloads(payloads, translator, ex.provider)
                if events:
                    if ex.ttft is None:
                        ex.ttft = clock() - ex.started
                    failed = _ended_with_error(events, ex)
                    out = encode_events(events)
                    if debug:
                        debug.translated_response(out)
                    resp.write(out)
                    state["last"] = clock()
                    await resp.drain()
                if translator.done:
                    break
                if translator.finish_reason and translator.has_upstream_usage:
                    # everything is known: finish now rather than wait for [DONE] (PROTOCOL §3.3)
                    out = encode_events(translator.finish())
                    if debug:
                        debug.translated_response(out)
                    resp.write(out)
                    break
            if not translator.done:  # upstream ended: flush a pending event, then finalize
                events = _translate_payloads(parser.close(), translator, ex.provider)
                if not translator.done:
                    if translator.finish_reason is not None:
                        events.extend(translator.finish())
                    else:
                        # The body ended before any finish_reason or [DONE]: the answer was cut
                        # (PROTOCOL §3.3 lets only a stream with its finish_reason end without [DONE]).
                        events.extend(translator.fail(ProxyError(
                            502, "api_error", f"{ex.provider}: upstream stream ended before the answer was "
                                              f"complete (no finish_reason or [DONE])")))
                failed = _ended_with_error(events, ex)
                out = encode_events(events)
                if debug:
                    debug.translated_response(out)
                resp.write(out)
        except UpstreamError as e:
            upstream.close()
            err = map_transport_error(e, ex.provider)
            resp.write(encode_events(translator.fail(err)))
            ex.error_type, ex.error_message = err.error_type, err.message
            failed = True
        except Exception:
            # A bug, or input nobody foresaw: the client still gets an explicit end, not a cut.
            log.exception("%s: relaying the stream failed", ex.provider)
            upstream.close()
            resp.write(_internal_error_events(translator))
            ex.error_type, ex.error_message = "api_error", "internal error while relaying the stream"
            failed = True
        except BaseException:
            upstream.close()  # cancelled (client left): never pool a half-read connection
            raise
        finally:
            pinger.cancel()
            ex.book(translator.usage or {}, translator.tool_count)
        if failed:
            # An error event ends the stream: finish the HTTP message cleanly (so the client parses
            # the event rather than seeing a broken transfer), then close the connection.
            ex.status = 502
            upstream.close()
            await resp.end()
            resp.abort()
            return
        await resp.end()
        await _drain(chunks, upstream)

    async def _ping_loop(self, resp: Responder, state: dict) -> None:
        """Keep the client's idle timer happy while the upstream is silent (slow first token)."""
        interval = self.ping_interval
        while True:
            await asyncio.sleep(interval)
            if self.clock() - state["last"] >= interval and not resp.closed:
                resp.write(_PING)
                state["last"] = self.clock()


def _too_deep(provider: str) -> ProxyError:
    return ProxyError(502, "api_error", f"{provider}: upstream returned JSON nested too deeply to translate",
                      {}, True)


def _ended_with_error(events: list[dict], ex: Exchange) -> bool:
    """Did these events end the stream with an error event? Its type and message go to ex."""
    if not events or events[-1]["type"] != "error":
        return False
    error = events[-1].get("error") or {}
    ex.error_type, ex.error_message = str(error.get("type", "")), str(error.get("message", ""))
    return True


def _internal_error_events(translator: StreamTranslator) -> bytes:
    err = ProxyError(500, "api_error", "internal proxy error while relaying the stream", {}, False)
    try:
        return encode_events(translator.fail(err))
    except Exception:  # the translator itself is what broke: a bare error event still ends the stream
        return encode_event({"type": "error", "error": {"type": err.error_type, "message": err.message}})


def _translate_payloads(payloads: list[str], translator: StreamTranslator, provider: str) -> list[dict]:
    events: list[dict] = []
    for payload in payloads:
        if payload == _DONE:
            events.extend(translator.finish())
            break
        try:
            chunk = json.loads(payload)
        except ValueError:
            log.warning("%s: skipped a malformed stream chunk", provider)
            continue
        except RecursionError:
            events.extend(_too_deep_chunk(translator, provider))
            break
        if isinstance(chunk, dict):
            try:
                events.extend(translator.feed(chunk))
            except RecursionError:
                events.extend(_too_deep_chunk(translator, provider))
                break
    return events


def _too_deep_chunk(translator: StreamTranslator, provider: str) -> list[dict]:
    """A chunk nested thousands deep ends the stream with an error event (the relay then
    finishes the HTTP message cleanly) rather than a connection dropped mid-frame."""
    log.warning("%s: stream chunk nested too deeply; ending the stream", provider)
    return translator.fail(_too_deep(provider))


async def _drain(chunks, upstream: UpstreamResponse, timeout_s: float = 1.0) -> None:
    """Read what is left of a finished upstream stream (usually just `[DONE]` and the chunked
    terminator) so its connection can go back to the pool; give up quickly otherwise."""
    async def rest() -> None:
        async for _ in chunks:
            pass
    try:
        await asyncio.wait_for(rest(), timeout_s)
    except (asyncio.TimeoutError, UpstreamError):
        pass
    finally:
        upstream.close()  # no-op when the body was read to the end and pooled
