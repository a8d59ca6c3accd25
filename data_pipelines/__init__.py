"""Offline tools that turn videos and texts into sharded TFRecords."""
