"""Dagster jobs, schedules and sensors that drive and watch the platform."""
