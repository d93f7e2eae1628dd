# The project image for k8s/: Ray's CUDA image at the exact Ray version pyproject.toml pins (a client, the
# head and the workers must run the same Ray), plus rayood with its dependencies. Code and configs only:
# data, bundles and credentials never go into the image (.dockerignore; S3 keys come from a Kubernetes Secret).
#   docker build -t registry.example.com/rayood:0.1.0 .
FROM rayproject/ray:2.60.0-py311-gpu

# made by the image's user (ray), so that pip can write its build files here
RUN mkdir /home/ray/rayood
WORKDIR /home/ray/rayood
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users rayood rayood
# pip keeps the base image's ray (same version as the pin) and adds the [data,train] extras; torch and
# torchvision are not in the base image and come from PyPI, whose Linux x86_64 wheels bundle their CUDA
# runtime, so they need only a recent enough NVIDIA driver on the GPU nodes.
RUN pip install --no-cache-dir . && python -c "import ray, torch, rayood; print(ray.__version__, torch.__version__)"
COPY --chown=ray:users jobs jobs
COPY --chown=ray:users configs configs
