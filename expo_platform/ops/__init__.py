"""Running the platform: local services, supervision of the stream, alerts, `make up`, the Dagster
home.
"""
