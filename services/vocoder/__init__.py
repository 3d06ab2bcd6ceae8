"""The vocoder stage: mel (50 Hz, 80 bins) → 24 kHz PCM with CosyVoice2's HiFT.

`services.vocoder.model` holds the torch model code and its per-request streaming state; this
package itself imports nothing heavy, so serving code can import it without torch.
"""
