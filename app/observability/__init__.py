"""Logs, timings, metrics, error tracking and tracing: each in its own module."""
