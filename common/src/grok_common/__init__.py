"""Rules that the operator and grok-server both apply, written once (pure: no I/O, no dependencies).

The operator checks a GrokDeployment against them at admission, so that a spec the server would refuse is
refused before any GPU is taken, with the server's own words; the server applies them when it starts.
"""
