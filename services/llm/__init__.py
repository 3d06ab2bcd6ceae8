"""The LLM stage: text (and prompt) → CosyVoice 2 speech tokens at 25 Hz."""
