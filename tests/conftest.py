"""Shared fixtures. `devcluster` and `k8s_namespace` come from grok_devcluster's pytest plugin."""
