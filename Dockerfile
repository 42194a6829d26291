# clasp container: the zipapp on a distroless Python (no shell, no package manager, non-root).
#   docker build -t clasp .
#   docker run --rm -p 127.0.0.1:8080:8080 -e OPENAI_API_KEY=sk-... clasp -model gpt-4o

# ---- builder: only makes /out/clasp.pyz (stdlib zipapp, nothing installed). Python 3.11 like
# the runtime, so --compile's bytecode is used there (start-up about twice as fast).
FROM python:3.11-slim AS builder
WORKDIR /src
COPY tools/build_zipapp.py tools/build_zipapp.py
COPY clasp/ clasp/
RUN python3 tools/build_zipapp.py --compile --output /out/clasp.pyz \
 && python3 -I /out/clasp.pyz -version

# ---- runtime: distroless Python 3.11 (Debian 12), one file added
FROM gcr.io/distroless/python3-debian12:nonroot
COPY --from=builder /out/clasp.pyz /app/clasp.pyz
USER nonroot
# Listen on all interfaces inside the container; publish the port on the host as you need
# (docker-compose.yml publishes it on 127.0.0.1 only).
ENV CLASP_HOST=0.0.0.0 \
    CLASP_PORT=8080 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# Exec form: distroless has no shell and no curl; the zipapp checks GET /health on CLASP_PORT itself.
HEALTHCHECK --interval=30s --timeout=6s --start-period=5s --retries=3 \
    CMD ["python3", "/app/clasp.pyz", "healthcheck"]
ENTRYPOINT ["python3", "/app/clasp.pyz"]
