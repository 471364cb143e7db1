"""The operator's control loop: kopf handlers by what they watch, the state they share, status writes."""
