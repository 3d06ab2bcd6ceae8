"""The in-process pipeline (library and monolith): the same stages without the network."""
