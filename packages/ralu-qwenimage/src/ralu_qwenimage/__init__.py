"""ralu adapter for Qwen-Image (diffusers QwenImagePipeline)."""
