"""Test support: real processes and sockets the integration tests drive."""
