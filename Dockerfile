# The MaskTFX pipeline image: what KFP's TFX components, the retraining CronJob and
# `masktfx` itself run in. The maintained stack (TFX 1.21 on Python 3.13, Debian 13's glibc 2.41),
# pinned as a developer's .venv on such a machine: the install step below is the one `make setup`
# runs there (pip install -c constraints/tfx-1.21.txt), minus the dev extras.

# Wheels of everything, built where a compiler is (a few packages ship only sources).
FROM python:3.13.5-slim-trixie AS wheels
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/masktfx/src
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY masktfx ./masktfx
COPY modules ./modules
COPY pipeline ./pipeline
COPY components ./components
COPY serving ./serving
RUN pip wheel --no-cache-dir -c constraints/tfx-1.21.txt . -w /opt/masktfx/wheels

FROM python:3.13.5-slim-trixie

ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MASKTFX_WHEEL_DIR=/opt/masktfx/share

RUN groupadd --gid 10001 masktfx \
    && useradd --uid 10001 --gid masktfx --home-dir /home/masktfx --create-home masktfx

COPY --from=wheels /opt/masktfx/wheels /opt/masktfx/wheels
COPY constraints/tfx-1.21.txt /opt/masktfx/constraints.txt
RUN pip install --no-index --find-links /opt/masktfx/wheels -c /opt/masktfx/constraints.txt masktfx \
    && rm -rf /opt/masktfx/wheels \
    && pip download --no-deps "stardist==0.9.2" "deepforest==2.1.0" -d /opt/masktfx/share

USER 10001:10001
WORKDIR /home/masktfx
ENTRYPOINT ["masktfx"]
CMD ["--help"]
