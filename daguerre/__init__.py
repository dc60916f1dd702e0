"""Daguerre: self-hosted photorealistic image generation for the FLUX.1 model family."""

__version__ = "0.1.0"

import logging as _logging

# Import-time noise of torchao (fp8 profiles, T5 int8), printed by every command otherwise: a warning
# per prebuilt CUDA kernel library that does not load here (each one on a CPU box), torch's notes on
# the enums it registers, and diffusers' note that it cannot unpickle torchao checkpoints (Daguerre
# loads none). The features that need torchao's kernels say so themselves when asked for.
# transformers' note that torchvision is absent (the PIL image processors it falls back to are the ones
# diffusers' FLUX pipelines use anyway) goes too.
for _name in (
    "torchao",
    "torch.utils._pytree",
    "diffusers.quantizers.torchao.torchao_quantizer",
    "transformers.utils.import_utils",
):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
