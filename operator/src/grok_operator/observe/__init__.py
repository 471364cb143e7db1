"""Reading what the cluster reports (pure): conditions, phase and status; servers' start-up reports."""
