"""The `cosyvoice` command line."""
