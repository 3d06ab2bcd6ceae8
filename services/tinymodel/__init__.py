"""`cosyvoice make-tiny-model`: a random-weight CosyVoice2 model directory in the official layout."""
