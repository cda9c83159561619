# skyinfer: one image for the node agent (default command) and the scheduler (`skyinfer serve ...`).
#   docker build -t skyinfer .                         # add --build-arg EXTRAS='[models]' for the cloud mask
#   docker run --rm -p 50061:50061 skyinfer            # an agent emulating a CubeSat
#   docker run --rm skyinfer serve --scenario /scenarios/demo.yaml --listen 0.0.0.0:50051 --db /data/skyinfer.db
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HEALTH_ADDR=127.0.0.1:50061

RUN groupadd --system --gid 10001 skyinfer \
 && useradd --system --uid 10001 --gid skyinfer --home-dir /data --create-home --shell /usr/sbin/nologin skyinfer

WORKDIR /src
COPY pyproject.toml README.md ./
COPY skyinfer ./skyinfer
COPY orbit ./orbit
COPY scheduler ./scheduler
COPY node_agent ./node_agent
ARG EXTRAS=""
RUN pip install ".${EXTRAS}" && cd / && rm -rf /src

WORKDIR /data
USER skyinfer
VOLUME ["/data"]
EXPOSE 50051 50061

# Health through the gRPC health service of whichever server the container runs (HEALTH_ADDR; the
# scheduler's containers set it to 127.0.0.1:50051). Exit 0 only when it answers SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -m node_agent.healthcheck "$HEALTH_ADDR" || exit 1

ENTRYPOINT ["skyinfer"]
CMD ["agent", "--node-id", "agent", "--profile", "cubesat", "--listen", "0.0.0.0:50061", "--models-dir", "/data/models"]
