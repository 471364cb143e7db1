"""Where a replica's weights come from: a node-local copy of the shared model cache (node_copy)."""
