"""The lab: what measures the method rather than runs it (docs/architecture.md).

Validation on the toy world (validate.py), the discovery and generation benchmarks
(benchmarks.py), the baselines a user would pick instead of Cones (baselines/) and the table
that compares them (compare.py). The lab may import anything; no module of the core
(cones_tasks/) imports it.
"""
