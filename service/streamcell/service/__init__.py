"""The serving side: Kafka pipeline, gRPC API, metrics, model reloading.

Never imports Ray (a test checks it).
"""
