"""Synthetic traffic (landing files or Kafka) and the demo."""
