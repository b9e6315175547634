# syntax=docker/dockerfile:1
# One image for every ReClo service: `docker run IMAGE auth` runs `reclo serve auth`.
#
#   docker build -t reclo:dev .
#   docker run --rm -e RECLO_DATABASE_URL=... reclo:dev gateway
#
# Stage 1 builds wheels for ReClo and its server dependencies (compilers live only here);
# stage 2 installs them offline into a slim runtime that runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# For any dependency that has no binary wheel for the target platform (arm64, musl...).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
# The server needs shared/ and services/ only: clients/ (the agent, the recovery CLI)
# ship on their own and nothing server-side imports them.
COPY shared ./shared
COPY services ./services
RUN pip wheel --wheel-dir /wheels '.[server]'

FROM ${PYTHON_IMAGE} AS runtime
# qemu-utils: recovery workers convert assembled disk images with qemu-img (VMDK/VHD for
# EC2 import). Nothing else from Debian is needed at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-utils \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without a passwd lookup;
# deploy/k8s uses the same id in its securityContext.
ARG RECLO_UID=10001
RUN groupadd --system --gid ${RECLO_UID} reclo \
 && useradd --system --uid ${RECLO_UID} --gid reclo --home-dir /var/lib/reclo \
        --no-create-home --shell /usr/sbin/nologin reclo \
 && install -d -o reclo -g reclo -m 0750 /var/lib/reclo
# The wheels are bind-mounted, not copied, so they add no layer to the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/reclo \
 && /opt/reclo/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-index --find-links /wheels 'reclo[server]'
ENV PATH=/opt/reclo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RECLO_DATA_DIR=/var/lib/reclo \
    RECLO_LOG_FORMAT=json
USER ${RECLO_UID}:${RECLO_UID}
WORKDIR /var/lib/reclo
# gateway 8080, auth 8081, backup 8082, recovery 8083, instances 8084, scheduler 8085
# (shared/settings.py DEFAULT_PORTS).
EXPOSE 8080 8081 8082 8083 8084 8085
ENTRYPOINT ["reclo", "serve"]
CMD ["gateway"]
