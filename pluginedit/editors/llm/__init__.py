"""Decoder LLM pruning: sequential calibration (``calib``), unit choice and refit (``select``),
the ``modhifi-llm`` editor (``editor``)."""
