"""improved MeanFlow in plain PyTorch: network, objectives, draws, sampler, codecs, EMA, checkpoints."""

from .attention import forward_ad_attention
from .checkpoint import load_model, load_official, save_model
from .codecs import PixelCodec, SDVAECodec, make_codec
from .draws import DrawConfig, StepDraws, draw_step, step_generator
from .ema import EMA
from .fast_step import FastIMFObjective
from .generator import Generator, load_generator, save_generator
from .model import SIZES, IMFDiT, build_model
from .objectives import FlowMatchingObjective, IMFObjective, LossOutput, MeanFlowObjective
from .sampling import generate, index_noise, sample, to_uint8

__all__ = [
    "EMA", "SIZES", "DrawConfig", "FastIMFObjective", "FlowMatchingObjective", "Generator", "IMFDiT", "IMFObjective",
    "LossOutput", "MeanFlowObjective", "PixelCodec", "SDVAECodec", "StepDraws", "build_model", "draw_step",
    "forward_ad_attention", "generate", "index_noise", "load_generator", "load_model", "load_official", "make_codec",
    "sample", "save_generator", "save_model", "step_generator", "to_uint8",
]
