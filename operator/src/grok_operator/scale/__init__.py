"""Autoscaling: the decision (pure) and the Prometheus queries it decides from."""
