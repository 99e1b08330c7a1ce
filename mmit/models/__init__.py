"""Models: LLM loading, tuning modes and the multimodal model."""
