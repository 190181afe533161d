"""Measurement: FLOPs, latency, memory, fidelity, cost model, reports."""
