"""The export tool's run side, in the ExecuTorch runtime: loading a ``.pte`` safely, greedy decoding,
``validate`` (program vs eager PyTorch) and ``generate``."""
