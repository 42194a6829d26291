"""The /v1/messages pipeline, one module per stage.

    messages.py  the stages in order: rate limit -> parse -> route -> chain -> relay
    chain.py     cache, queue, circuit breaker, retries, fallback: a 2xx upstream response
    relay.py     upstream response -> Anthropic response (whole, or relayed stream)
    exchange.py  the book-keeping of one request (metrics, access log)
    wire.py      JSON in and out, error responses
"""
