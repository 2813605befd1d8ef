"""Dagster assets and asset checks of the batch layer: each one reads, calls the library, writes."""
