"""imagpose: faithful reference implementation and deployment toolkit for IMAGPose (NeurIPS 2024)."""

from .canvas import GridLayout, JointCanvas, PoseRequest, View, build_canvas
from .models import CrossViewAttention, FLCTokenizer, IMAGPoseImageEncoder, IMAGPoseUNet, PoseGuider
from .pipeline import GenerationResult, IMAGPosePipeline, IMAGPosePipelineOutput
from .pose import Keypoints, keypoints_from_json, render_pose
from .presets import PRESETS, build_pipeline, get_preset
from .sampling_config import DeepCacheConfig, SamplingConfig

__version__ = "0.1.0"

__all__ = [
    "CrossViewAttention", "DeepCacheConfig", "FLCTokenizer", "GenerationResult", "GridLayout",
    "IMAGPoseImageEncoder", "IMAGPosePipeline", "IMAGPosePipelineOutput", "IMAGPoseUNet", "JointCanvas", "Keypoints",
    "PRESETS", "PoseGuider", "PoseRequest", "SamplingConfig", "View", "build_canvas", "build_pipeline", "get_preset",
    "keypoints_from_json", "render_pose",
]
