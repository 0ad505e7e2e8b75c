"""unlearnbench: benchmark LLM unlearning and knowledge editing on structured knowledge."""

__version__ = "0.1.0"
