"""Every range, name and default of a generation request, written once.

The wire schemas, the CLI, validation, the engine's plan and /openapi.json all read these tables.
Ranges follow the Runware API's imageInference reference; parameters are named as that API names them
(positivePrompt, CFGScale...), which is what error messages say.
"""

from __future__ import annotations

MAX_SEED = 2**63 - 1
RANDOM_SEEDS = 2**32  # a seed the server draws is in [0, 2^32)
OUTPUT_FORMATS = ("JPG", "PNG", "WEBP")
PROMPT_CHARS = (2, 3000)
SIZE_STEP = 64

# name: (min, max), inclusive. Nested fields are named as errors name them (controlNet.weight...).
RANGES: dict[str, tuple[float, float]] = {
    "width": (128, 2048),
    "height": (128, 2048),
    "steps": (1, 50),
    "CFGScale": (0, 20),
    "trueCFGScale": (0, 20),
    "seed": (0, MAX_SEED),
    "numberResults": (1, 20),
    "strength": (0, 1),
    "outputQuality": (20, 99),
    "maskMargin": (32, 128),
    "lora.weight": (-4, 4),
    "controlNet.weight": (-4, 4),
    "controlNet.startStep": (0, 49),
    "controlNet.endStep": (1, 50),
    "controlNet.startStepPercentage": (0, 99),
    "controlNet.endStepPercentage": (1, 100),
    "controlNet.lowThresholdCanny": (0, 255),
    "controlNet.highThresholdCanny": (0, 255),
    "ipAdapters.weight": (-4, 4),
    "outpaint.top": (0, 2048),
    "outpaint.bottom": (0, 2048),
    "outpaint.left": (0, 2048),
    "outpaint.right": (0, 2048),
    "outpaint.blur": (0, 64),
    "acceleratorOptions.teaCacheDistance": (0, 1),
    "acceleratorOptions.dbCacheThreshold": (0, 1),
    "acceleratorOptions.dbCacheSkipInterval": (1, 1000),
    "acceleratorOptions.cacheStartStep": (0, 1000),
    "acceleratorOptions.cacheEndStep": (1, 1000),
    "acceleratorOptions.cacheStartStepPercentage": (0, 99),
    "acceleratorOptions.cacheEndStepPercentage": (1, 100),
    "acceleratorOptions.cacheMaxConsecutiveSteps": (1, 5),
    "safety.threshold": (0, 1),
    "hiresFix.steps": (1, 50),
    "hiresFix.strength": (0, 1),
    "ultralytics.CFGScale": (0, 50),
    "ultralytics.confidence": (0, 1),
    "ultralytics.inpaintSize": (128, 2048),
    "ultralytics.maskBlur": (0, 100),
    "ultralytics.maskPadding": (0, 20),
    "ultralytics.steps": (1, 100),
    "ultralytics.strength": (0, 1),
    "puLID.idWeight": (0, 3),
    "puLID.CFGStartStep": (0, 49),
    "puLID.CFGStartStepPercentage": (0, 99),
    "puLID.trueCFGScale": (0, 10),
}
# The numeric fields that take whole numbers. Every one of them also accepts an integral float (1024.0, as
# JavaScript clients send numbers); any other float is refused.
INTEGERS = frozenset(
    {"width", "height", "steps", "seed", "numberResults", "outputQuality", "maskMargin",
     "controlNet.startStep", "controlNet.endStep", "controlNet.startStepPercentage", "controlNet.endStepPercentage",
     "controlNet.lowThresholdCanny", "controlNet.highThresholdCanny",
     "outpaint.top", "outpaint.bottom", "outpaint.left", "outpaint.right", "outpaint.blur",
     "acceleratorOptions.dbCacheSkipInterval", "acceleratorOptions.cacheStartStep",
     "acceleratorOptions.cacheEndStep", "acceleratorOptions.cacheStartStepPercentage",
     "acceleratorOptions.cacheEndStepPercentage", "acceleratorOptions.cacheMaxConsecutiveSteps",
     "hiresFix.steps", "ultralytics.inpaintSize", "ultralytics.maskBlur", "ultralytics.maskPadding",
     "ultralytics.steps", "puLID.CFGStartStep", "puLID.CFGStartStepPercentage"}
)  # fmt: skip

MAX_LORAS = 8
MAX_CONTROLNETS = 4
MAX_IP_ADAPTERS = 4
MAX_PULID_IMAGES = 4  # reference photos of one identity, averaged in ID-embedding space
CONTROL_MODES = ("balanced", "prompt", "controlnet")
PREPROCESSORS = ("canny",)
# Union ControlNets (InstantX / Shakker-Labs FLUX.1-dev-Controlnet-Union) embed the condition type as
# a mode id; these are their published ids, in order.
CONTROL_TYPES = ("canny", "tile", "depth", "blur", "pose", "gray", "lq")
PROMPT_WEIGHTINGS = ("compel", "sdEmbeds")
# What happens to an image the safety checker flags: blurred, pixelated, blacked out, replaced by a "sensitive
# content" notice, or only flagged (the result says so; the pixels stay as they are).
SAFETY_ACTIONS = ("blur", "pixelate", "black", "sensitive_content_text", "flag")

# ---- defaults
# hiresFix: the first pass is half the final size (each side a multiple of 16, what FLUX.1 takes), the
# refine pass is image-to-image at this strength: the reference API's own example value, enough to redraw
# the texture an upscaler cannot invent (skin, hair) while keeping the first pass's composition.
HIRES_SCALE = 2
HIRES_STRENGTH = 0.6
# layerDiffuse: the reference API's ids of the LoRA and the transparent VAE it applies
LAYER_DIFFUSE_LORA = "runware:120@2"
LAYER_DIFFUSE_VAE = "runware:120@4"
HIRES_LATENT = "latent"  # hiresFix.model naming the latent upscale (no upscaler file)
# ultralytics (face enhancement): the reference API's defaults.
FACE_DEFAULTS = {"cfg_scale": 8.0, "confidence": 0.9, "inpaint_size": 1024, "mask_blur": 5, "mask_padding": 5,
                 "steps": 20, "strength": 0.3}  # fmt: skip
DEFAULT_SCHEDULER = "Default"
DEFAULT_OUTPUT_QUALITY = 95
DEFAULT_SIZE = 1024  # the CLI's width and height when none is given (the task API requires both)
DEFAULT_STRENGTH = 0.8  # img2img / inpaint
FULL_STRENGTH = 1.0  # outpaint and Fill models generate the masked area from pure noise
OUTPAINT_DEFAULT_BLUR = 8
CANNY_THRESHOLDS = (100, 200)
# Sampling defaults of the FLUX.1 families (BFL's reference CLI and diffusers' docs): schnell is
# timestep-distilled for 4 steps and was trained with 256 T5 tokens; dev with 512.
DEFAULT_STEPS = {"schnell": 4, "dev": 28, "fill": 28, "kontext": 28, "control": 28}
MAX_SEQUENCE_LENGTH = {"schnell": 256, "dev": 512, "fill": 512, "kontext": 512, "control": 512}
# Distilled guidance: Fill was distilled at 30, Kontext at 2.5, Canny at 30 and Depth at 10 (BFL's reference
# settings). A control model's (or control LoRA's) default is Depth's when its name says depth, else Canny's.
# Schnell-type models have no guidance input.
DEFAULT_GUIDANCE = {"dev": 3.5, "fill": 30.0, "kontext": 2.5, "control": 30.0, "control-depth": 10.0}
# Step caching, as the reference API documents its defaults.
DEFAULT_TEA_CACHE_DISTANCE = 0.5
DEFAULT_DB_CACHE_THRESHOLD = 0.08  # cache-dit's FLUX.1-dev setting (the reference says 0.25; docs/api.md)
DEFAULT_DB_CACHE_SKIP_INTERVAL = 5
DEFAULT_CACHE_MAX_CONSECUTIVE = 3

# ---- scheduler names: name -> (sampler algorithm, sigma spacing)
# The names are the reference API's 75. The engine's registry (engine/schedulers.py) builds a sampler
# for each algorithm; the spacings are samplers.SPACINGS; docs/schedulers.md lists what each name runs.
SCHEDULERS: dict[str, tuple[str, str]] = {
    "Default": ("flow-euler", "default"),
    "FlowMatchEulerDiscreteScheduler": ("flow-euler", "default"),
    "Euler": ("flow-euler", "default"),
    "EulerDiscreteScheduler": ("flow-euler", "default"),
    "DDIM": ("flow-euler", "default"),
    "DDIMScheduler": ("flow-euler", "default"),
    "Euler Karras": ("euler", "karras"),
    "Euler Exponential": ("euler", "exponential"),
    "Euler Beta": ("euler", "beta"),
    "EDMEulerScheduler": ("euler", "karras"),
    "Euler a": ("euler_ancestral", "default"),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", "default"),
    "DDPMScheduler": ("ddpm", "default"),
    "Heun": ("heun", "default"),
    "Heun Karras": ("heun", "karras"),
    "HeunDiscreteScheduler": ("heun", "default"),
    "KDPM2DiscreteScheduler": ("dpm2", "default"),
    "KDPM2AncestralDiscreteScheduler": ("dpm2_ancestral", "default"),
    "LMS": ("lms", "default"),
    "LMS Karras": ("lms", "karras"),
    "LMSDiscreteScheduler": ("lms", "default"),
    "IPNDM Uniform": ("ipndm", "uniform"),
    "IPNDM Uniform Beta": ("ipndm", "uniform beta"),
    "IPNDM Uniform Exponential": ("ipndm", "uniform exponential"),
    "IPNDM Uniform Karras": ("ipndm", "uniform karras"),
    "IPNDMScheduler": ("ipndm", "default"),
    "PNDMScheduler": ("ipndm", "default"),
    "TCDScheduler": ("tcd", "default"),
    "LCM": ("lcm", "default"),
    "LCMScheduler": ("lcm", "default"),
    "DPM++": ("dpmpp_2m", "default"),
    "DPM++ Karras": ("dpmpp_2m", "karras"),
    "DPM++ Exponential": ("dpmpp_2m", "exponential"),
    "DPM++ Beta": ("dpmpp_2m", "beta"),
    "DPM++ Uniform": ("dpmpp_2m", "uniform"),
    "DPM++ Uniform Karras": ("dpmpp_2m", "uniform karras"),
    "DPM++ Uniform Exponential": ("dpmpp_2m", "uniform exponential"),
    "DPM++ Uniform Beta": ("dpmpp_2m", "uniform beta"),
    "DPM++ 2M": ("dpmpp_2m", "default"),
    "DPM++ 2M Karras": ("dpmpp_2m", "karras"),
    "DPM++ 2M Exponential": ("dpmpp_2m", "exponential"),
    "DPM++ 2M Beta": ("dpmpp_2m", "beta"),
    "DPM++ 2M Uniform": ("dpmpp_2m", "uniform"),
    "DPMSolverMultistepScheduler": ("dpmpp_2m", "default"),
    "DPMSolverMultistepInverse": ("dpmpp_2m", "default"),
    "EDMDPMSolverMultistepScheduler": ("dpmpp_2m", "karras"),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", "default"),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", "karras"),
    "DPM++ 2M SDE Exponential": ("dpmpp_2m_sde", "exponential"),
    "DPM++ 2M SDE Beta": ("dpmpp_2m_sde", "beta"),
    "DPM++ 2M SDE Uniform": ("dpmpp_2m_sde", "uniform"),
    "DPM++ 3M": ("dpmpp_3m", "default"),
    "DPM++ 3M Karras": ("dpmpp_3m", "karras"),
    "DPM++ 3M Exponential": ("dpmpp_3m", "exponential"),
    "DPM++ 3M Beta": ("dpmpp_3m", "beta"),
    "DPM++ 3M Uniform": ("dpmpp_3m", "uniform"),
    "DPM++ 3M SDE Uniform": ("dpmpp_3m_sde", "uniform"),
    "DPM++ SDE": ("dpmpp_sde", "default"),
    "DPM++ SDE Karras": ("dpmpp_sde", "karras"),
    "DPM++ SDE Exponential": ("dpmpp_sde", "exponential"),
    "DPM++ SDE Beta": ("dpmpp_sde", "beta"),
    "DPMSolverSinglestepScheduler": ("dpmpp_2s", "default"),
    "DEISMultistepScheduler": ("deis", "default"),
    "UniPC": ("unipc_2m", "default"),
    "UniPC Karras": ("unipc_2m", "karras"),
    "UniPC Uniform": ("unipc_2m", "uniform"),
    "UniPC Uniform Beta": ("unipc_2m", "uniform beta"),
    "UniPC Uniform Exponential": ("unipc_2m", "uniform exponential"),
    "UniPC Uniform Karras": ("unipc_2m", "uniform karras"),
    "UniPC 2M": ("unipc_2m", "default"),
    "UniPC 2M Karras": ("unipc_2m", "karras"),
    "UniPC 2M Uniform": ("unipc_2m", "uniform"),
    "UniPC 3M": ("unipc_3m", "default"),
    "UniPC 3M Karras": ("unipc_3m", "karras"),
    "UniPC 3M Uniform": ("unipc_3m", "uniform"),
}
SCHEDULER_NAMES = tuple(sorted(SCHEDULERS, key=str.lower))
