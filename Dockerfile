# syntax=docker/dockerfile:1
# The featurestore image: the `featurestore` CLI with Spark (driver side), Feast, Kafka client,
# FastAPI server and monitors. Configured only through FEATURESTORE_* variables at run time.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Spark needs a Java 17 runtime; procps gives Spark's launch scripts `ps`.
# (The man1 directory is absent on slim images and the JRE's postinst links into it.)
RUN set -eux; \
    mkdir -p /usr/share/man/man1; \
    apt-get update; \
    apt-get install -y --no-install-recommends openjdk-17-jre-headless procps; \
    rm -rf /var/lib/apt/lists/*

# UID/GID 185 is the `spark` user of the apache/spark images: driver (here) and executors (on the
# Spark workers) write the same Parquet tree on the shared /data volume. /app itself is writable
# (home directory; Spark and Feast drop small caches in the working and home directories), the
# copied sources in it are not.
ARG APP_UID=185
RUN groupadd --system --gid "${APP_UID}" featurestore \
 && useradd --system --uid "${APP_UID}" --gid featurestore --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin featurestore \
 && mkdir -p /data /app \
 && chown featurestore:featurestore /data /app

WORKDIR /app

# Dependencies first, in their own layer, so a code change does not re-download torch and Spark.
# torch==2.13.0 (constraints.txt) resolves to the +cpu build from the PyTorch CPU index: the local
# wheel directory the Makefile uses does not exist in the image, and PyPI's build pulls CUDA.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt \
      --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY featurestore/ featurestore/
COPY streaming/ streaming/
COPY monitors/ monitors/
COPY fraud_example/ fraud_example/
COPY monitors.yaml ./
# `featurestore apply` renders feature_repo/feature_store.yaml, so the app user owns this folder.
COPY --chown=featurestore:featurestore feature_repo/ feature_repo/
RUN pip install --no-cache-dir -c constraints.txt \
      --extra-index-url https://download.pytorch.org/whl/cpu . \
 && rm -rf build ./*.egg-info

# The package is installed into site-packages, so point settings at the copied definitions;
# everything the engines write (offline Parquet, raw archive, caches) goes to the /data volume.
ENV FEATURESTORE_PROFILE=services \
    FEATURESTORE_DATA_DIR=/data \
    FEATURESTORE_FEATURE_REPO=/app/feature_repo

VOLUME /data
USER featurestore

ENTRYPOINT ["featurestore"]
CMD ["--help"]
