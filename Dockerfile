FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream_app stream_app
COPY api api
COPY schemas schemas
COPY simulator simulator
COPY bench bench
COPY cli cli
RUN pip install --no-cache-dir .
ENV HOST=0.0.0.0 PORT=8000 BATCH_JOB_STORAGE_PATH=/data/batch_jobs BATCH_SQLITE_PATH=/data/batch.db
VOLUME /data
EXPOSE 8000
CMD ["python", "-m", "stream_app"]
