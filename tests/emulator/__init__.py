"""The vLLM-Omni emulator: test infrastructure only, never a product backend."""
