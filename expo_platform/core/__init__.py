"""The rules both layers call (METRICS.md in code): hours, beacon validation, visits, metrics. No
I/O, and nothing from the other subpackages.
"""
