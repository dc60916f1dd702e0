"""Daguerre: self-hosted photorealistic image generation for the FLUX.1 model family."""

__version__ = "0.1.0"

import logging as _logging
import warnings as _warnings

# Import-time noise of torchao (fp8 profiles, T5 int8), printed by every command otherwise: a warning
# per prebuilt CUDA kernel library that does not load here (each one on a CPU box), torch's notes on
# the enums it registers, and diffusers' note that it cannot unpickle torchao checkpoints (Daguerre
# loads none). The features that need torchao's kernels say so themselves when asked for.
# transformers' note that torchvision is absent (the PIL image processors it falls back to are the ones
# diffusers' FLUX pipelines use anyway) goes too.
# diffusers' "No LoRA keys associated to CLIPTextModel" on every LoRA without CLIP layers, and its note on
# CLIP's 77-token window (the prompt lint says which words were cut, once), go as well.
for _name in (
    "torchao",
    "torch.utils._pytree",
    "diffusers.quantizers.torchao.torchao_quantizer",
    "transformers.utils.import_utils",
    "diffusers.loaders.lora_base",
    "diffusers.pipelines.flux",
):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

# PEFT's notes when an adapter is loaded beside others ("Already found a `peft_config`") or covers fewer
# modules than its config lists: both are how Daguerre hot-swaps LoRAs, and the equivalence tests check
# the numbers, so they only alarm users.
_warnings.filterwarnings("ignore", message="While injecting the PEFT adapters", category=RuntimeWarning)
_warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
