"""The public TextToSpeech gateway: pipes speech tokens through the three stages chunk by chunk."""
