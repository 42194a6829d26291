"""Real Claude Code (pinned in provision.py) using its WebSearch tool through clasp (issue 14).

The scripted main upstream makes the main model call WebSearch; Claude Code then sends its own
side request (Anthropic's web_search_20250305 server tool) through clasp. With a web-search
target (-web-search openrouter,...) clasp sends it to a fake OpenRouter that answers with
url_citation annotations, and the next main-conversation request must carry Claude Code's tool
result with a `Links:` line listing those URLs. Without any search-capable target the tool
result must say `Web search error: unavailable`.

In 2.1.330 WebSearch is a deferred tool: it is not in the `tools` list of the first request (the
model would load it through ToolSearch), but Claude Code runs a WebSearch call the model makes
anyway, whatever the model name, so the scripted main model simply calls it.
"""

from __future__ import annotations

import json

import pytest

from conftest import claude_env, run_claude
from harness import FakeUpstream, Reply, json_reply, spawn_clasp, sse_reply
from test_claude_code import MAIN_MODEL, RUN_TIMEOUT, Outcome, Turn, _text, scripted  # noqa: F401

SEARCH_MODEL = "openai/gpt-4o-mini"
QUERY = "python 3.13 release date"
LINKS = [("https://www.python.org/downloads/release/python-3130/", "Python Release Python 3.13.0"),
         ("https://peps.python.org/pep-0719/", "PEP 719 - Python 3.13 Release Schedule")]
ANSWER = "Python 3.13.0 was released on October 7, 2024."
FINAL = "Python 3.13 came out on 2024-10-07."


def search_reply(seen) -> Reply:
    """A fake OpenRouter with the web plugin: the answer and its url_citation annotations."""
    body = seen.json()
    if seen.target.split("?")[0] != "/v1/chat/completions" or body.get("plugins") != [{"id": "web", "max_results": 5}]:
        return json_reply({"error": {"message": f"unexpected search request {seen.target}"}}, 400)
    anns = [{"type": "url_citation", "url_citation": {"url": url, "title": title, "start_index": 0,
                                                      "end_index": len(ANSWER)}} for url, title in LINKS]
    usage = {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320}
    if not body.get("stream"):
        return json_reply({"id": "gen-1", "object": "chat.completion", "model": SEARCH_MODEL,
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {
                               "role": "assistant", "content": ANSWER, "annotations": anns}}], "usage": usage})
    base = {"id": "gen-1", "object": "chat.completion.chunk", "model": SEARCH_MODEL}
    return sse_reply([
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ANSWER[:20]}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": ANSWER[20:]}}]},
        {**base, "choices": [{"index": 0, "delta": {"annotations": anns}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": usage}])


def run_web_search(claude_bin, home, work, main, clasp_args: list[str], clasp_env: dict) -> Outcome:
    clasp, port = spawn_clasp(["-provider", "custom", "-model", MAIN_MODEL, *clasp_args],
                              {"CUSTOM_BASE_URL": main.url, **clasp_env})
    env = claude_env(home, f"http://127.0.0.1:{port}")
    try:
        proc, result = run_claude(claude_bin, f"Search the web: {QUERY}", env, work, timeout=RUN_TIMEOUT)
    finally:
        clasp.terminate()
        clasp.wait(15)
    clasp_log = clasp.stderr.read().decode(errors="replace")
    clasp.stdout.close()
    clasp.stderr.close()
    return Outcome(proc, result, clasp_log, main)


def web_search_result(out: Outcome, main) -> str:
    """Claude Code's WebSearch tool result, as the next main-conversation request carries it."""
    bodies = main.bodies()
    out.check(len(bodies) >= 2, "no main-model request after the WebSearch call")
    tools = [m for m in bodies[1]["messages"] if m.get("role") == "tool" and m.get("tool_call_id") == "call_ws_1"]
    out.check(len(tools) == 1, "the follow-up request carries no tool result for the WebSearch call")
    return _text(tools[0].get("content"))


def test_web_search_through_a_web_search_target(claude_bin, claude_home, scripted, lt):
    home, work = claude_home
    main = scripted([Turn(tool_calls=[("call_ws_1", "WebSearch", {"query": QUERY})]), Turn(text=FINAL)])
    search = FakeUpstream(lt, search_reply)
    try:
        out = run_web_search(claude_bin, home, work, main, ["-web-search", f"openrouter,{SEARCH_MODEL}"],
                             {"OPENROUTER_API_KEY": "sk-or-test", "OPENROUTER_BASE_URL": search.url})
        result = out.succeeded()
        text = web_search_result(out, main)
        out.check(f'Web search results for query: "{QUERY}"' in text, f"unexpected tool result: {text!r}")
        out.check("Links: " in text and "No links found" not in text, f"no links in the tool result: {text!r}")
        links = json.loads(text.split("Links: ", 1)[1].split("\n", 1)[0])
        out.check(links == [{"title": t, "url": u} for u, t in LINKS], f"links {links}")
        out.check(ANSWER in text, f"the search answer is not in the tool result: {text!r}")
        out.check(result.get("result") == FINAL, f"result {result.get('result')!r}")
        out.check(len(search.requests) >= 1, "the side request never reached the web-search target")
        side = search.requests[-1].json()
        out.check(side["model"] == SEARCH_MODEL, f"side request model {side['model']!r}")
        user = " ".join(_text(m.get("content")) for m in side["messages"] if m.get("role") == "user")
        out.check(QUERY in user, f"the query did not reach the search target: {user!r}")
        usage = (result.get("modelUsage") or {})
        searches = sum(v.get("webSearchRequests", 0) for v in usage.values() if isinstance(v, dict))
        out.check(searches == 1, f"modelUsage webSearchRequests {searches}, expected 1: {usage}")
    finally:
        search.close()


def test_web_search_without_a_search_provider_says_unavailable(claude_bin, claude_home, scripted):
    home, work = claude_home
    main = scripted([Turn(tool_calls=[("call_ws_1", "WebSearch", {"query": QUERY})]),
                     Turn(text="Search is unavailable.")])
    out = run_web_search(claude_bin, home, work, main, [], {})
    out.succeeded()
    text = web_search_result(out, main)
    out.check("Web search error: unavailable" in text, f"tool result {text!r}")
    out.check("CLASP_WEB_SEARCH" in text, f"the tool result does not name the setting: {text!r}")
    side = [b for b in main.bodies(None) if "Perform a web search" in json.dumps(b)]
    out.check(side == [], "clasp called the upstream for a search it cannot do")
    out.check("web search requested" in out.clasp_log, "no warning in clasp's log")
