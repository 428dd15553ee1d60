"""Pose Generator: generation API, RQ workers and their observability."""

__version__ = "1.0.0"
APP_NAME = "pose-generator"
API_PREFIX = "/api/apps/pose-generator"
QUEUE_NAME = "pose-generation"
# Operators' retries of failed poses: workers take from it only when the main queue is empty.
RETRY_QUEUE_NAME = "pose-generation-retries"
