"""The two modes a module runs in, as the harness names them: ``nn.Module.train()`` and ``eval()``."""

MODES = ("train", "eval")
