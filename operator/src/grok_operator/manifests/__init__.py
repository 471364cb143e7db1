"""The children of a GrokDeployment, as manifests (pure functions of the spec and its plan)."""
