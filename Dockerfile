# The flyaway worker image, also run as the agent Machine on Fly:
#   docker build -t registry.fly.io/<app>:flyaway-agent . && docker push registry.fly.io/<app>:flyaway-agent
# then name that image in the plan (agent_image of a fly_volume or fly_app source). The agent Machine runs
# `flyaway agent --task-queue ...`; as a worker elsewhere, the default is `flyaway worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flyaway ./flyaway
RUN pip install . && rm -rf /src

# root, so that file modes on a mounted volume never keep the agent from reading it
WORKDIR /
ENTRYPOINT ["flyaway"]
CMD ["worker"]
