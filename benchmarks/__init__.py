"""The bundled benchmark harness."""
