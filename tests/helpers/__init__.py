"""Shared test helpers: real files, tiny configs, trainers and report fixtures (imported as helpers.<name>)."""
