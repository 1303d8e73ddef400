# syntax=docker/dockerfile:1
# Build wheels for the dependencies in one stage; the final image has no compilers,
# runs as a non-root user, and runs the server from /app (migrations/ lives there too).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY chat_server chat_server
RUN pip wheel --no-cache-dir --wheel-dir /wheels . && rm /wheels/chat_server-*.whl

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 chat
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY --chown=chat protocol protocol
COPY --chown=chat chat_server chat_server
COPY --chown=chat migrations migrations
COPY --chown=chat alembic.ini .
USER chat
ENV HOST=0.0.0.0 PORT=8000 PYTHONUNBUFFERED=1 PYTHONPATH=/app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"
CMD ["python", "-m", "chat_server"]
