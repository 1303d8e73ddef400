# syntax=docker/dockerfile:1
# The locked runtime dependencies (uv.lock, no dev tools, no embedded Postgres) install
# in a layer of their own before the source is copied, so a code edit rebuilds only the
# last layers. The final image has no compilers and runs as a numeric non-root user.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN UV_PROJECT_ENVIRONMENT=/app/.venv uv sync --frozen --no-dev --no-cache

FROM python:3.11-slim
COPY --from=build /app/.venv /app/.venv
WORKDIR /app
COPY protocol protocol
COPY chat_server chat_server
COPY clients/js/dist clients/js/dist
COPY migrations migrations
COPY alembic.ini .
USER 10001:10001
ENV HOST=0.0.0.0 PORT=8000 PYTHONUNBUFFERED=1 PYTHONPATH=/app PATH=/app/.venv/bin:$PATH
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"
CMD ["python", "-m", "chat_server"]
