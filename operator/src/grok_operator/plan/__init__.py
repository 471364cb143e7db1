"""Sizing a replica (pure): the planner, the model shapes, the GPU products, and what admission refuses."""
