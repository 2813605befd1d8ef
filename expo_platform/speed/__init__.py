"""The speed layer: the Spark Structured Streaming app, its Kafka source, its offsets in ZooKeeper
and the writer lease.
"""
