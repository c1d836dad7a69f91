# The worker image: `python -m stream_app` (worker + API in one process) from the wheel.
# Stage 1 builds the wheel from the sources below; tests/test_deployment.py builds the same
# wheel from exactly these COPY lines (and .dockerignore), so a package missing here fails CI.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY stream_app stream_app
COPY api api
COPY schemas schemas
COPY simulator simulator
COPY bench bench
COPY cli cli
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

# Stage 2 installs the wheel and its dependencies, and no source tree: what runs is what
# the wheel holds.
FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data insight \
    && mkdir -p /data && chown insight /data
USER insight
# The tables (RocksDB), the SQLite mirror and any relative default land in /data: a volume.
WORKDIR /data
ENV HOST=0.0.0.0 PORT=8000 BATCH_JOB_STORAGE_PATH=/data/batch_jobs BATCH_SQLITE_PATH=/data/batch.db \
    PYTHONUNBUFFERED=1
VOLUME /data
EXPOSE 8000
# A stop (SIGTERM) drains calls in flight first: give it BATCH_SHUTDOWN_TIMEOUT_SECONDS and
# more before a SIGKILL (docker-compose.yml's stop_grace_period, Kubernetes'
# terminationGracePeriodSeconds).
CMD ["python", "-m", "stream_app"]
