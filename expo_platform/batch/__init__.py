"""The batch layer: the per-partition steps that Dagster's hourly assets run, and the late-data
rules.
"""
