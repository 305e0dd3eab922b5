# The atf-es image every service of docker-compose.yml runs (one image, one
# command per service). Build: docker compose build.
FROM python:3.12-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY atf_es ./atf_es
RUN pip install --no-cache-dir . && useradd --create-home --uid 1000 atf \
    && mkdir -p /data && chown atf /data
USER atf
ENV ATF_DATA_DIR=/data PYTHONUNBUFFERED=1
ENTRYPOINT ["atf-es"]
CMD ["--help"]
