"""Pure nn.Module code and weight loading for the LLM stage; no serving code.

Import submodules directly (`services.llm.model.prompt` is torch-free and is used by the
torch-free scheduler, so this package must not import torch on its own).
"""
