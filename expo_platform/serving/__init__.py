"""What users read: the metric store (speed, batch and the merged view) and the speed-versus-batch
reconciliation.
"""
