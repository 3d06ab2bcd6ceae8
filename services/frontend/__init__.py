"""The Voices frontend: prompt audio and text, turned into what CosyVoice 2 conditions on."""
