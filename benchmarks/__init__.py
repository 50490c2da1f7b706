"""Benchmarks of the maas server and client (scripts; see README.md)."""
