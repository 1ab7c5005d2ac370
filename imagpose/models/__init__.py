"""IMAGPose model components (diffusers ``ModelMixin``/``ConfigMixin``, config.json + safetensors)."""

from .cva import CrossViewAttention
from .flc import FLCTokenizer
from .image_encoder import IMAGPoseImageEncoder
from .pose_guider import PoseGuider
from .unet import IMAGPoseUNet

__all__ = ["CrossViewAttention", "FLCTokenizer", "IMAGPoseImageEncoder", "IMAGPoseUNet", "PoseGuider"]
