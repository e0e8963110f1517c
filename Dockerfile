# The MaskTFX pipeline image: what KFP's TFX components, the retraining CronJob and
# `masktfx` itself run in. Same pinned stack as a developer's .venv: the install step below is the
# one `make setup` runs (pip install -c constraints.txt), minus the dev extras.
FROM python:3.10.13-slim-bookworm

ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MASKTFX_WHEEL_DIR=/opt/masktfx/share

RUN groupadd --gid 10001 masktfx \
    && useradd --uid 10001 --gid masktfx --home-dir /home/masktfx --create-home masktfx

WORKDIR /opt/masktfx/src
COPY pyproject.toml constraints.txt README.md ./
COPY masktfx ./masktfx
COPY modules ./modules
COPY pipeline ./pipeline
COPY components ./components
COPY serving ./serving

RUN pip install -c constraints.txt . \
    && pip download --no-deps "stardist==0.9.2" "deepforest==2.1.0" -d /opt/masktfx/share

USER 10001:10001
WORKDIR /home/masktfx
ENTRYPOINT ["masktfx"]
CMD ["--help"]
