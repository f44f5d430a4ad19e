"""Running the package: the YAML config, the launcher, Kubernetes manifests, the CLI, the demo
and the environment fixes an install needs."""
