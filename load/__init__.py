"""The protocol harness and benchmarks. Imports ``protocol`` only, never the server."""
