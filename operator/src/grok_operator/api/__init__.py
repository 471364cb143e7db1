"""The GrokDeployment API: its coordinates and its spec as typed blocks, each default written once."""
